"""A sealed requestState (service/request_state.py): readable only by the process that sealed it, bound to the
caller, the request and its arguments, good until it expires, and good once."""

from __future__ import annotations

import pytest

from virtual_mcp.errors import InvalidParams
from virtual_mcp.gateway.service.request_state import Issued, RequestStates


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


ISSUED = Issued.of("user:alice", "/mcp", "tools/call", "lab__crm__delete", {"id": 7})


def refused(states: RequestStates, state: object, issued: Issued = ISSUED) -> str:
    with pytest.raises(InvalidParams) as caught:
        states.open(state, issued)
    return caught.value.message


def test_a_state_opens_once_for_the_request_it_was_issued_for() -> None:
    states = RequestStates()
    state = states.seal(ISSUED, 60, {"k": "pass", "s": "backend's own"})
    assert "backend" not in state
    assert states.open(state, ISSUED) == {"k": "pass", "s": "backend's own"}
    assert "used already" in refused(states, state)


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (Issued.of("user:bob", "/mcp", "tools/call", "lab__crm__delete", {"id": 7}), "another caller"),
        (Issued.of("user:alice", "/mcp-server/lab/crm/server", "tools/call", "delete", {"id": 7}), "another request"),
        (Issued.of("user:alice", "/mcp", "prompts/get", "lab__crm__delete", {"id": 7}), "another request"),
        (Issued.of("user:alice", "/mcp", "tools/call", "lab__crm__drop", {"id": 7}), "another request"),
        (Issued.of("user:alice", "/mcp", "tools/call", "lab__crm__delete", {"id": 8}), "other arguments"),
    ],
)
def test_a_state_presented_for_anything_else_is_refused_and_stays_good(other: Issued, why: str) -> None:
    states = RequestStates()
    state = states.seal(ISSUED, 60, {"k": "pass"})
    assert why in refused(states, state, other)
    assert states.open(state, ISSUED) == {"k": "pass"}  # the refusal did not spend it


def test_an_expired_altered_or_foreign_state_is_refused() -> None:
    clock = Clock()
    states = RequestStates(clock)
    state = states.seal(ISSUED, 60, {"k": "pass"})
    clock.now += 61
    assert "expired" in refused(states, state)
    fresh = states.seal(ISSUED, 60, {"k": "pass"})
    flipped = fresh[:-3] + ("A" if fresh[-3] != "A" else "B") + fresh[-2:]
    assert "altered" in refused(states, flipped)
    assert "altered" in refused(RequestStates(clock), fresh)  # another process's key
    for junk in ("", "n1", 42, None, "vmcp1.", "vmcp1.!!!", "vmcp1." + "A" * 70_000):
        assert "not issued by this gateway" in refused(states, junk) or "altered" in refused(states, junk)
    assert states.open(fresh, ISSUED) == {"k": "pass"}

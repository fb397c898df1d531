"""A sealed requestState (service/request_state.py): readable only by a process holding its key (a replica sharing
the master key, or the process itself), bound to the caller, the request and its arguments, good until it expires,
and good once (over the fleet, with Redis)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis as RedisClient

from tests.ports import free_ports
from tests.services import Redis
from virtual_mcp.errors import InvalidParams
from virtual_mcp.fleet.once import FleetOnce
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.gateway.service.request_state import Issued, RequestStates
from virtual_mcp.vault.keys import LocalKeyProvider


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


ISSUED = Issued.of("user:alice", "/mcp", "tools/call", "lab__crm__delete", {"id": 7})


async def refused(states: RequestStates, state: object, issued: Issued = ISSUED) -> str:
    with pytest.raises(InvalidParams) as caught:
        await states.open(state, issued)
    return caught.value.message


async def test_a_state_opens_once_for_the_request_it_was_issued_for() -> None:
    states = RequestStates()
    state = states.seal(ISSUED, 60, {"k": "pass", "s": "backend's own"})
    assert "backend" not in state
    assert await states.open(state, ISSUED) == {"k": "pass", "s": "backend's own"}
    assert "used already" in await refused(states, state)


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
async def test_a_state_presented_for_anything_else_is_refused_and_stays_good(other: Issued, why: str) -> None:
    states = RequestStates()
    state = states.seal(ISSUED, 60, {"k": "pass"})
    assert why in await refused(states, state, other)
    assert await states.open(state, ISSUED) == {"k": "pass"}  # the refusal did not spend it


async def test_an_expired_altered_or_foreign_state_is_refused() -> None:
    clock = Clock()
    states = RequestStates(clock)
    state = states.seal(ISSUED, 60, {"k": "pass"})
    clock.now += 61
    assert "expired" in await refused(states, state)
    fresh = states.seal(ISSUED, 60, {"k": "pass"})
    flipped = fresh[:-3] + ("A" if fresh[-3] != "A" else "B") + fresh[-2:]
    assert "altered" in await refused(states, flipped)
    assert "altered" in await refused(RequestStates(clock), fresh)  # another process's key
    for junk in ("", "n1", 42, None, "vmcp1.", "vmcp1.!!!", "vmcp1." + "A" * 70_000):
        assert "not issued by this gateway" in await refused(states, junk) or "altered" in await refused(states, junk)
    assert await states.open(fresh, ISSUED) == {"k": "pass"}


async def test_replicas_sharing_the_master_key_open_each_others_states_during_a_key_rollout() -> None:
    old, new = LocalKeyProvider({"a": b"a" * 32}, "a"), LocalKeyProvider({"a": b"a" * 32, "b": b"b" * 32}, "b")
    before = RequestStates(keys=old.derived("request-state"))
    after = RequestStates(keys=new.derived("request-state"))
    assert await after.open(before.seal(ISSUED, 60, {"k": "pass"}), ISSUED) == {"k": "pass"}
    sealed_after = after.seal(ISSUED, 60, {"k": "pass"})
    assert "altered" in await refused(before, sealed_after)  # (a replica without the new key yet)
    other_fleet = RequestStates(keys=LocalKeyProvider({"c": b"c" * 32}, "c").derived("request-state"))
    assert "altered" in await refused(other_fleet, sealed_after)
    assert await RequestStates(keys=new.derived("request-state")).open(sealed_after, ISSUED) == {"k": "pass"}


async def test_a_state_is_good_once_over_the_fleet(redis: Redis) -> None:
    """Two replicas with one key and one Redis: a state used on one is refused on the other. Without Redis (the
    fleet cannot say), each replica still refuses it a second time."""
    keys = LocalKeyProvider({"a": b"a" * 32}, "a").derived("request-state")
    async with RedisClient.from_url(redis.url) as client:
        one, two = (RequestStates(keys=keys, once=FleetOnce(client, FleetStatus())) for _ in range(2))
        state = one.seal(ISSUED, 60, {"k": "pass"})
        assert await two.open(state, ISSUED) == {"k": "pass"}
        assert "used already" in await refused(one, state)
    status = FleetStatus()
    async with RedisClient(host="127.0.0.1", port=free_ports(1)[0], socket_connect_timeout=0.5) as down:
        alone = RequestStates(keys=keys, once=FleetOnce(down, status))
        state = alone.seal(ISSUED, 60, {"k": "pass"})
        assert await alone.open(state, ISSUED) == {"k": "pass"}
        assert "used already" in await refused(alone, state)
    assert status.degraded("sessions")

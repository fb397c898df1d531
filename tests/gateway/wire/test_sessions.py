"""The 2025-11-25 session table on its own: ownership, holding off expiry while a request is in flight, the sweep,
and what ending a session does to its requests and its GET stream."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import anyio

from virtual_mcp.config.settings import Limits
from virtual_mcp.gateway.wire.sessions import SessionTable


class _Stream:
    def __init__(self) -> None:
        self.closed = False

    def push(self, message: Mapping[str, Any]) -> None:
        raise AssertionError("nothing is pushed here")

    def close(self) -> None:
        self.closed = True


async def test_a_session_is_its_owners_only() -> None:
    table = SessionTable(Limits())
    session = table.open_session("user:alice", "2025-11-25")
    assert table.find(session.id, "user:alice") is session
    assert table.find(session.id, "user:bob") is None
    assert table.find("f" * 32, "user:alice") is None
    assert (table.open, table.owned_by("user:alice"), table.owned_by("user:bob")) == (1, 1, 0)


async def test_a_request_in_flight_holds_the_idle_countdown_and_its_end_restarts_it() -> None:
    table = SessionTable(Limits(session_idle_seconds=30))
    session = table.open_session("user:alice", "2025-11-25")
    opened = session.idle_deadline
    assert math.isfinite(opened)
    with table.holding(session):
        with table.holding(session):
            assert session.idle_deadline == math.inf
        assert session.idle_deadline == math.inf  # one request is still in flight
        assert table.sweep(anyio.current_time() + 3600) == 0  # held: never expired
    assert math.isfinite(session.idle_deadline) and session.idle_deadline >= opened
    assert table.sweep(session.idle_deadline - 1) == 0
    assert table.sweep(session.idle_deadline) == 1
    assert session.ended and session.closed.is_set() and table.find(session.id, "user:alice") is None


async def test_ending_a_session_cancels_its_requests_and_closes_its_stream() -> None:
    table = SessionTable(Limits())
    session = table.open_session("user:alice", "2025-11-25")
    stream = session.stream = _Stream()
    with table.call(session, 7) as call, table.call(session, "x") as other, table.call(session, "7") as again:
        assert call is not None and other is not None and again is None  # "7" and 7 are one id, in flight
        table.cancel(session, 8)  # not in flight: nothing happens
        assert not call.cancel.cancel_called
        table.end(session)
        assert call.cancel.cancel_called and call.session_ended and other.session_ended
    assert stream.closed and session.calls == {}
    table.end(session)  # twice is harmless


async def test_the_sweeper_ends_idle_sessions_while_it_runs() -> None:
    table = SessionTable(Limits(session_idle_seconds=0.01))
    session = table.open_session("user:alice", "2025-11-25")
    async with anyio.create_task_group() as tg:
        tg.start_soon(table.expire_idle, 0.01)
        with anyio.fail_after(5):
            await session.closed.wait()
        tg.cancel_scope.cancel()
    assert table.open == 0

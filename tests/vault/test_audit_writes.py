"""Writing the audit trail costs the event loop nothing but the hand-over: a batch's JSON lines, its rows, its
statements and its commit are made on a worker thread. (A batch built on the loop stalled every request in flight:
after a burst, the backlog's 500-record batches held the loop ~25 ms each, and the bench's c=1 p99 tripled.)"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from virtual_mcp import audit
from virtual_mcp.audit import AuditEvent, JsonLinesSink, bound
from virtual_mcp.vault import Database, audit_store
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore


def event(i: int) -> AuditEvent:
    return bound(
        AuditEvent(
            ts=time.time(),
            request_id=f"req-{i}",
            subject="user:alice@northwind.example",
            kind="user",
            name="alice@northwind.example",
            teams=("platform", "sre"),
            endpoint="/mcp-server/lab/echo/server",
            method="tools/call",
            server="lab/echo",
            tool="echo",
            detail={"status": "ok", "nested": {"n": i}},
        )
    )


@pytest.fixture
def threads_that_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each JSON line and each database row was made on."""
    seen: list[str] = []

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def recorded(*args: Any) -> Any:
            seen.append(threading.current_thread().name)
            return real(*args)

        monkeypatch.setattr(module, name, recorded)

    spy(audit, "event_json")
    spy(audit_store, "_values")
    return seen


async def test_a_batch_is_made_and_written_off_the_event_loop(tmp_path: Path, threads_that_built: list[str]) -> None:
    batch = [event(i) for i in range(50)]
    loop_thread = threading.current_thread().name
    async with Database.open(tmp_path) as db:
        await AuditStore(db).write(batch)
        await JsonLinesSink(tmp_path / "audit.jsonl").write(batch)
        assert len(threads_that_built) == 100
        assert loop_thread not in threads_that_built
        # ... and written whole: every record, its teams, in order, in both sinks.
        stored = await AuditStore(db).query(AuditQuery(limit=100))
        assert [e.request_id for e in reversed(stored)] == [e.request_id for e in batch]
        assert len(await AuditStore(db).query(AuditQuery(team="sre", limit=100))) == 50
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["request_id"] for line in lines] == [e.request_id for e in batch]
    assert lines[7]["detail"] == {"status": "ok", "nested": {"n": 7}} and lines[7]["teams"] == ["platform", "sre"]


async def test_a_failed_batch_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Database.open(tmp_path) as db:
        store = AuditStore(db)
        await store.write([event(0)])
        real = audit_store._values
        monkeypatch.setattr(audit_store, "_values", lambda e: real(e) if e.request_id != "req-3" else 1 / 0)
        with pytest.raises(ZeroDivisionError):
            await store.write([event(i) for i in range(1, 6)])
        assert [e.request_id for e in await store.query(AuditQuery(limit=10))] == ["req-0"]
        monkeypatch.setattr(audit_store, "_values", real)
        await store.write([event(9)])  # the writer connection is usable again
        assert [e.request_id for e in await store.query(AuditQuery(limit=10))] == ["req-9", "req-0"]

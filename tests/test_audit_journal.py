"""The audit trail's journal (virtual_mcp/audit_journal.py): the records a process killed outright had recorded but
not written are written by the next start, once each; a live process's journal is never taken; a journal is emptied
once its records are written, and kept while a sink fails."""

from __future__ import annotations

import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import anyio

from tests.support import REPO
from virtual_mcp.audit import AuditEvent, AuditLog
from virtual_mcp.audit_journal import AuditJournal, recover


def event(request_id: str, ts: float = 1_700_000_000.5) -> AuditEvent:
    return AuditEvent(ts, request_id, "user:alice@x.example", "user", "alice@x.example", ("t",), "/mcp", "tools/call")


class Trail:
    """A trail in memory (a sink, and what recovery asks of the database)."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[AuditEvent] = []
        self.fail = fail

    async def write(self, events: Sequence[AuditEvent]) -> None:
        if self.fail:
            raise OSError("the disk is full")
        self.events.extend(events)

    async def recorded(self, request_id: str) -> list[AuditEvent]:
        return [e for e in self.events if e.request_id == request_id]


# (A light child: it imports the journal alone, not the test kit, so as not to load a busy machine further.)
KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from virtual_mcp.audit import AuditEvent
    from virtual_mcp.audit_journal import AuditJournal

    journal = AuditJournal(Path(sys.argv[1]))
    for name in ("r1", "r2", "r3"):
        journal.append(AuditEvent(1_700_000_000.5, name, "user:alice@x.example", "user", "alice@x.example", ("t",),
                                  "/mcp", "tools/call"))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


async def test_the_records_of_a_process_killed_outright_are_written_by_the_next_start(tmp_path: Path) -> None:
    journals = tmp_path / "audit-journal"
    child = await anyio.run_process([sys.executable, "-c", KILLED, str(journals)], cwd=REPO, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    trail = Trail()
    trail.events.append(event("r2"))  # written before the kill
    assert await recover(journals, trail, trail.write) == 2
    assert sorted(e.request_id for e in trail.events) == ["r1", "r2", "r3"]  # r2 not twice
    assert list(journals.iterdir()) == []
    assert await recover(journals, trail, trail.write) == 0  # once


async def test_a_live_processs_journal_is_never_taken(tmp_path: Path) -> None:
    journals = tmp_path / "audit-journal"
    mine = AuditJournal(journals)
    mine.append(event("live"))
    trail = Trail()
    assert await recover(journals, trail, trail.write) == 0
    assert mine.path.exists() and trail.events == []
    path = mine.path
    mine.close()  # (its record never written: the segment stays, unlocked, for the next start)
    assert path.exists()
    assert await recover(journals, trail, trail.write) == 1


async def test_a_segment_goes_once_written_and_one_a_sink_failed_to_take_stays_for_the_next_start(
    tmp_path: Path,
) -> None:
    """Records go to the journal before they are queued; once a batch is in every sink its segment goes. A batch a
    sink failed to take keeps its segment (later ones still go once written), and the next start writes it."""
    journals = tmp_path / "audit-journal"
    journal = AuditJournal(journals)
    sink = Trail()
    log = AuditLog([sink], linger=0, journal=journal)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.run)
        await log.record(event("a"))
        assert journal.path.stat().st_size > 0  # in the journal before it is written
        await log.flush()
        assert [p.stat().st_size for p in journals.iterdir()] == [0]  # its segment went; a fresh one is open
        sink.fail = True
        await log.record(event("lost-to-the-sink"))
        await log.flush()
        sink.fail = False
        await log.record(event("b"))
        await log.flush()
        assert len(list(journals.iterdir())) == 2  # the failed batch's segment, and the open one
        await log.close()
    assert len(list(journals.iterdir())) == 1  # the clean stop removed the rest
    later = Trail()
    assert await recover(journals, later, later.write) == 1
    assert [e.request_id for e in later.events] == ["lost-to-the-sink"] and not list(journals.iterdir())


async def test_a_journal_the_trail_cannot_take_is_kept(tmp_path: Path) -> None:
    journals = tmp_path / "audit-journal"
    child = await anyio.run_process([sys.executable, "-c", KILLED, str(journals)], cwd=REPO, check=False)
    assert child.returncode == -signal.SIGKILL
    broken = Trail(fail=True)
    assert await recover(journals, broken, broken.write) == 0
    assert len(list(journals.iterdir())) == 1  # kept
    trail = Trail()
    assert await recover(journals, trail, trail.write) == 3

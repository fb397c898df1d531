"""The audit trail's write-ahead journal: what a gateway process killed outright (SIGKILL, the OOM killer) had
recorded but not yet written to its sinks is written by the next process to start on the same data directory.

The writer (audit.AuditLog) batches records for a moment before it writes them. So each record is also appended to
this process's own journal as it is recorded, before the request's answer is sent: one `write()` of one line, in the
kernel's page cache from then on, so it outlives the process (not the machine: there is no fsync per record). Once
everything recorded has been written to the sinks, the journal is emptied.

Journals live in `<data dir>/audit-journal/`, one per process, each held under an exclusive lock by its process.
At start a process takes every journal whose lock nobody holds (its process is gone), writes each record the trail
does not hold yet (the same request id, time and method), and removes the journal. Processes sharing a data
directory therefore never take each other's records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio

from virtual_mcp.audit import AuditEvent, event_json

logger = logging.getLogger(__name__)

DIRECTORY = "audit-journal"
_SUFFIX = ".jsonl"


class AuditJournal:
    """This process's journal (locked while it lives)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._dirty = False

    def append(self, event: AuditEvent) -> None:
        """The record, in the journal before the request's answer leaves (one write: a line is never torn by
        another)."""
        os.write(self._fd, (event_json(event) + "\n").encode())
        self._dirty = True

    def settled(self) -> None:
        """Everything appended is in the sinks: the journal starts empty again."""
        if self._dirty:
            os.ftruncate(self._fd, 0)
            self._dirty = False

    def close(self) -> None:
        """A clean stop (everything written): the journal goes."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)


class Trail(Protocol):
    """What recovery asks of the trail: the records it holds for a request."""

    async def recorded(self, request_id: str) -> Sequence[AuditEvent]: ...


def _event(line: str) -> AuditEvent | None:
    try:
        fields: dict[str, Any] = json.loads(line)
        fields["teams"] = tuple(fields.get("teams") or ())
        fields["forwarded_headers"] = tuple(fields.get("forwarded_headers") or ())
        return AuditEvent(**fields)
    except (ValueError, TypeError):  # a line cut short by the kill, or not ours
        return None


def _orphans(directory: Path) -> list[tuple[Path, int, list[AuditEvent]]]:
    """The journals in `directory` whose process is gone, each locked (by this process, now), with their records."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its process lives (this one's own among them)
            os.close(fd)
            continue
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as journal:
            events = [e for line in journal if (e := _event(line)) is not None]
        found.append((path, fd, events))
    return found


def _remove(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


async def recover(directory: Path, trail: Trail, write: Callable[[list[AuditEvent]], Awaitable[None]]) -> int:
    """Write what the journals of processes that are gone hold and the trail does not; remove them. How many
    records were written."""
    written = 0
    orphans = await anyio.to_thread.run_sync(_orphans, directory)
    for i, (path, fd, events) in enumerate(orphans):
        try:
            missing = []
            for event in events:
                held = await trail.recorded(event.request_id)
                if not any(h.ts == event.ts and h.method == event.method for h in held):
                    missing.append(event)
            if missing:
                await write(missing)
                written += len(missing)
                logger.warning(
                    "audit: %d record(s) of a gateway process that stopped before writing them recovered from %s",
                    len(missing),
                    path.name,
                )
        except BaseException:
            for _, other, _ in orphans[i:]:  # left for the next start
                os.close(other)
            raise
        await anyio.to_thread.run_sync(_remove, path, fd)
    return written

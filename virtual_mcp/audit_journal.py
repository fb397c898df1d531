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


class _Segment:
    """One file of the journal, locked by this process while it holds it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{os.getpid()}-{secrets.token_hex(6)}{_SUFFIX}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.unwritten = 0  # records appended to it that no batch has written yet
        self.appended = 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


class AuditJournal:
    """This process's journal: a file per run of the writer's batches (a segment), each removed once every record
    in it is written. A segment whose records a sink failed to take stays, and is written at the next start."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._directory = directory
        self._generation = 0
        self._segments = {0: _Segment(directory)}

    @property
    def path(self) -> Path:
        """The segment records are appended to now."""
        return self._segments[self._generation].path

    def append(self, event: AuditEvent) -> int:
        """The record, in the journal before the request's answer leaves (one write: a line is never torn by
        another); which segment holds it."""
        segment = self._segments[self._generation]
        os.write(segment.fd, (event_json(event) + "\n").encode())
        segment.unwritten += 1
        segment.appended += 1
        return self._generation

    def rotate(self) -> None:
        """Records appended from now on go to a new segment (the writer took a batch: the segments before it empty
        as their records are written)."""
        if self._segments[self._generation].appended:
            self._generation += 1
            self._segments[self._generation] = _Segment(self._directory)

    def written(self, generation: int) -> None:
        """One record of segment `generation` is in every sink; a segment left behind with none unwritten goes."""
        segment = self._segments.get(generation)
        if segment is None:
            return
        segment.unwritten -= 1
        if not segment.unwritten and generation != self._generation:
            segment.remove()
            del self._segments[generation]

    def close(self) -> None:
        """A stop: the segments whose records are all written go; the others stay for the next start."""
        for generation, segment in list(self._segments.items()):
            if segment.unwritten:
                os.close(segment.fd)  # (the lock goes with it: the next start takes the segment)
            else:
                segment.remove()
            del self._segments[generation]


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
        except Exception:  # the trail could not take them: the journal stays for the next start
            logger.exception("audit: could not write the records of %s; kept for the next start", path.name)
            os.close(fd)
            continue
        except BaseException:
            for _, other, _ in orphans[i:]:  # left for the next start
                os.close(other)
            raise
        await anyio.to_thread.run_sync(_remove, path, fd)
    return written

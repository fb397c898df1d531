"""Audit events: who called which tool on which server, when, with what outcome; and where they are written.

One event per `tools/call` (allowed, denied or failed), per refused request at an endpoint (a denied `tools/list`
among them), and per revocation. Events never carry a token, a secret or a forwarded header's value: only header
names, a principal's identity, and error messages that the gateway composed itself (backend errors are scrubbed of
configured secrets and redacted). A server's tool arguments and results are recorded only where it opts in
(`audit: {arguments: true, results: true, redact: [...]}`), with the configured keys and every credential-looking
key replaced.

Every field of an event is bounded before it is queued (`bound`, see `virtual_mcp/audit_bounds.py`): a record can be
neither made huge nor made unwritable by what a caller or a backend sent, and its base (who, what, when, outcome) is
always written.

Requests hand events to `AuditLog.record`, which queues them; one background writer drains the queue in batches to
every sink (the gateway's database, a JSON lines file), so a request never waits on a disk write unless the
queue is full (then it waits: the trail is never silently incomplete). With a journal (audit_journal.py), each record
is also appended to it as it is queued, so a process killed before its writer wrote the record loses nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from virtual_mcp.audit_bounds import (
    FIELD_LIMITS,
    MAX_FORWARDED_HEADERS,
    MAX_HEADER_NAME_CHARS,
    MAX_TEAM_CHARS,
    MAX_TEAMS,
    bounded_list,
    clip,
    detail_json,
    plain,
    redacted,
    render_detail,
)

logger = logging.getLogger(__name__)

ALLOWED, DENIED, FAILED = "allowed", "denied", "failed"
OUTCOMES = (ALLOWED, DENIED, FAILED)
MAX_PENDING = 10_000
BATCH = 500
LINGER = 0.05  # seconds a batch may wait for company: at most ~20 transactions a second under load
_FIELDS = tuple(FIELD_LIMITS.items())


@dataclass(slots=True)
class AuditEvent:
    ts: float  # Unix time, seconds
    request_id: str
    subject: str  # as in authorized_subjects: user:alice@x, virtualaccount:ci
    kind: str
    name: str
    teams: tuple[str, ...]
    endpoint: str
    method: str
    server: str | None = None
    tool: str | None = None  # the backend's own tool name (the name as called is in `called` when it differs)
    called: str | None = None
    outcome: str = ALLOWED
    error: str | None = None
    latency_ms: float = 0.0
    auth_mode: str | None = None  # none | header | passthrough | oauth2:client_credentials | ...
    forwarded_headers: tuple[str, ...] = ()  # names only
    detail: dict[str, Any] | None = field(default=None)
    target: str | None = None  # the identity the event is about, when not its actor's: a revocation's subject

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies every value (~40 us an event: most of what writing a batch of
        # the trail as JSON lines cost). `detail` is the event's own dict, not a copy.
        out = {name: getattr(self, name) for name in _EVENT_FIELDS}
        out["teams"] = list(self.teams)
        out["forwarded_headers"] = list(self.forwarded_headers)
        return out


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))


def revocation_event(operator: str, detail: dict[str, Any], ts: float, target: str | None = None) -> AuditEvent:
    """A revocation by an operator (`virtual-mcp revoke`, `token revoke`) of `target` (`user:dave@x`), recorded
    like a call, so `audit --user dave@x` finds it beside dave's own calls."""
    return operator_event(operator, "revoke", detail, ts, target)


def operator_event(
    operator: str, method: str, detail: dict[str, Any], ts: float, target: str | None = None
) -> AuditEvent:
    """What an operator did from the command line (`revoke`, `audit prune`, `db copy`), recorded like a call."""
    return AuditEvent(
        ts=ts,
        request_id="cli",
        subject=f"operator:{operator}",
        kind="operator",
        name=operator,
        teams=(),
        endpoint="cli",
        method=method,
        detail=render_detail(detail, by_name=False),
        target=target,
    )


def safe_text(text: str) -> str:
    """An error message fit for the trail: redacted and bounded (only the start of a huge one is looked at)."""
    return redacted(text, FIELD_LIMITS["error"])


def bound(event: AuditEvent) -> AuditEvent:
    """`event` with every field within its limit and storable (see `virtual_mcp/audit_bounds.py`), in place. Every
    event passes here on its way to the sinks, whoever made it."""
    for name, limit in _FIELDS:
        value = getattr(event, name)
        if value is not None and (len(value) > limit or not plain(value)):  # else clip would return it as is
            setattr(event, name, clip(value, limit))
    if event.teams:
        event.teams = bounded_list(event.teams, MAX_TEAMS, MAX_TEAM_CHARS)
    if event.forwarded_headers:
        event.forwarded_headers = bounded_list(event.forwarded_headers, MAX_FORWARDED_HEADERS, MAX_HEADER_NAME_CHARS)
    if event.detail is not None and detail_json(event.detail) is None:
        rendered = render_detail(event.detail, by_name=False)  # redacted by whoever composed it
        event.detail = rendered if isinstance(rendered, dict) else {"value": rendered}
    return event


def event_json(event: AuditEvent) -> str:
    """One record as a JSON line: ASCII only (non-ASCII escaped), so no terminal that shows the file (`tail -f`)
    meets a raw control, bidi override or escape sequence a caller chose; JSON's own escapes keep it exact."""
    try:
        return json.dumps(event.as_dict(), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):  # an event that did not pass `bound`: one record must not fail the batch
        return json.dumps(bound(event).as_dict(), separators=(",", ":"), allow_nan=False)


class AuditSink(Protocol):
    async def write(self, events: Sequence[AuditEvent]) -> None: ...


class JsonLinesSink:
    """Appends one JSON object per event to a file (created 0600), for log shippers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def write(self, events: Sequence[AuditEvent]) -> None:
        await anyio.to_thread.run_sync(self._append, events)

    def _append(self, events: Sequence[AuditEvent]) -> None:
        """On a worker thread: the lines are made there too, not on the event loop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for e in events:
                f.write(event_json(e) + "\n")  # buffered: written out in pieces, the GIL let go for each


class Journal(Protocol):
    """This process's write-ahead journal of records (audit_journal.AuditJournal)."""

    def append(self, event: AuditEvent) -> int: ...

    def rotate(self) -> None: ...

    def written(self, generation: int) -> None: ...

    def close(self) -> None: ...


class AuditLog:
    """The queue between requests and the sinks, and its writer (run it in the app's task group)."""

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        max_pending: int = MAX_PENDING,
        linger: float = LINGER,
        journal: Journal | None = None,
    ) -> None:
        self._sinks = tuple(sinks)
        self._linger = linger
        self._journal = journal
        self._in_journal: dict[int, int] = {}  # id of a queued event -> the journal segment that holds it
        # Events, and flush markers: the writer sets a marker once everything queued before it is written.
        self._send: MemoryObjectSendStream[AuditEvent | anyio.Event]
        self._receive: MemoryObjectReceiveStream[AuditEvent | anyio.Event]
        self._send, self._receive = anyio.create_memory_object_stream[AuditEvent | anyio.Event](max_pending)
        self._drained = anyio.Event()

    @property
    def pending(self) -> int:
        return self._send.statistics().current_buffer_used

    def record_nowait(self, event: AuditEvent) -> bool:
        """Queue `event` if there is room (the usual case); False if `record` must wait for some."""
        try:
            self._send.send_nowait(bound(event))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        if self._journal is not None:
            self._in_journal[id(event)] = self._journal.append(event)
        return True

    async def record(self, event: AuditEvent) -> None:
        bound(event)
        if self._journal is not None:
            self._in_journal[id(event)] = self._journal.append(event)
        try:
            try:
                self._send.send_nowait(event)
            except anyio.WouldBlock:
                await self._send.send(event)  # the writer is behind: wait rather than lose the record
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.warning("audit event after shutdown, written directly: %s %s", event.method, event.outcome)
            self._journaled([event], await self._write([event]))

    async def flush(self) -> None:
        """Wait until every event recorded before this call is written."""
        marker = anyio.Event()
        await self._send.send(marker)
        await marker.wait()

    async def run(self) -> None:
        """Drain the queue until `close()`; everything queued before it is written.

        After the first record of a batch, the writer gathers for `linger` seconds (or until `BATCH` records or a
        flush marker): one transaction and one file append for many calls, instead of one each.
        """
        try:
            async with self._receive:
                async for first in self._receive:
                    items = [first]
                    with anyio.move_on_after(self._linger):
                        while len(items) < BATCH and not isinstance(items[-1], anyio.Event):
                            try:
                                items.append(await self._receive.receive())
                            except anyio.EndOfStream:
                                break
                    events = [item for item in items if isinstance(item, AuditEvent)]
                    if events:
                        if self._journal is not None:
                            self._journal.rotate()
                        with anyio.CancelScope(shield=True):
                            written = await self._write(events)
                        self._journaled(events, written)
                    for item in items:
                        if isinstance(item, anyio.Event):
                            item.set()  # everything queued before the marker was in this batch or an earlier one
        finally:
            self._drained.set()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking events and wait (bounded) until the writer has written what was queued."""
        left = self.pending
        await self._send.aclose()
        with anyio.move_on_after(timeout):
            await self._drained.wait()
        if not self._drained.is_set():
            logger.error(
                "audit writer did not finish within %gs; up to %d record(s) are left to the journal (written at the "
                "next start)",
                timeout,
                left,
            )
        elif self._journal is not None:
            self._journal.close()
            self._journal = None

    def _journaled(self, batch: list[AuditEvent], written: bool) -> None:
        """The batch is in every sink (`written`): its records leave the journal. Otherwise the journal keeps them,
        and the next start writes what the trail lacks."""
        for event in batch:
            generation = self._in_journal.pop(id(event), None)
            if written and generation is not None and self._journal is not None:
                self._journal.written(generation)

    async def _write(self, batch: list[AuditEvent]) -> bool:
        """Into every sink; False if any failed."""
        written = True
        for sink in self._sinks:
            try:
                await sink.write(batch)
            except Exception:  # a broken sink must not stop the others, nor the writer
                written = False
                logger.exception("audit sink %s failed to write %d event(s)", type(sink).__name__, len(batch))
        return written

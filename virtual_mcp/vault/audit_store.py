"""The audit trail in the gateway's database: the sink the gateway writes to, and the queries `virtual-mcp audit`
answers from. Every filter is an index range (time, subject, target, server, tool, outcome, team), so a question about
a million records is answered in well under a second."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from virtual_mcp.audit import AuditEvent
from virtual_mcp.audit_bounds import detail_json, render_detail
from virtual_mcp.identity import identity
from virtual_mcp.vault.sql import Row, SqlDatabase

# The audit table's columns after its id (also what `db copy` moves: vault/copy.py).
COLUMNS = (
    "ts",
    "request_id",
    "subject",
    "kind",
    "name",
    "teams",
    "endpoint",
    "method",
    "server",
    "tool",
    "called",
    "outcome",
    "error",
    "latency_ms",
    "auth_mode",
    "forwarded_headers",
    "detail",
    "target",
)
_COLUMNS = ", ".join(COLUMNS)
# Every query is built from these fixed column names and `?` placeholders only; values are always parameters.
_INSERT = f"INSERT INTO audit (id, {_COLUMNS}) VALUES ({', '.join('?' * 19)})"  # noqa: S608
_SELECT = f"SELECT id, {_COLUMNS} FROM audit"  # noqa: S608
_SELECT_BY_TEAM = (
    f"SELECT a.id, {', '.join('a.' + c for c in _COLUMNS.split(', '))}"  # noqa: S608
    " FROM audit_teams t JOIN audit a ON a.id = t.audit_id"
)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to look for; every field narrows the answer. Times are Unix seconds, `until` exclusive."""

    user: str | None = None
    team: str | None = None
    virtual_account: str | None = None
    server: str | None = None
    tool: str | None = None
    outcome: str | None = None
    method: str | None = None
    request_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


class AuditStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Append `events` in one transaction (ids assigned here, under the write lock), on a worker thread: the
        event loop that serves requests does none of a batch's work (see `Database.insert_batch`)."""
        await self._db.insert_batch("SELECT COALESCE(MAX(id), 0) + 1 FROM audit", partial(_statements, events))

    async def query(self, q: AuditQuery) -> list[AuditEvent]:
        """The newest events matching `q`, newest first, at most `q.limit`. Filtering by a user or a virtual account
        finds what they did and what was done to them (their revocations): two index ranges, merged."""
        who = _subject(q)
        if who is None:
            rows = await self._rows(q, None, None)
        else:
            rows = await self._rows(q, "subject", who) + await self._rows(q, "target", who)
            rows.sort(key=lambda r: (r["ts"], r["id"]), reverse=True)
            rows = [r for i, r in enumerate(rows) if i == 0 or r["id"] != rows[i - 1]["id"]][: max(q.limit, 0)]
        return [_event(r) for r in rows]

    async def recorded(self, request_id: str) -> list[AuditEvent]:
        """The records of one request (what audit recovery compares a journal's records with)."""
        return await self.query(AuditQuery(request_id=request_id, limit=1000))

    async def prune(self, before: float) -> int:
        """Delete the events older than `before` (Unix seconds), with their team index rows; how many events."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM audit_teams WHERE ts < ?", (before,))
            return await tx.execute("DELETE FROM audit WHERE ts < ?", (before,))

    async def acted(self, subject: str) -> bool:
        """Whether any record was made by `subject` (`user:alice@x`)."""
        return await self._db.fetchone("SELECT 1 FROM audit WHERE subject = ? LIMIT 1", (subject,)) is not None

    async def _rows(self, q: AuditQuery, column: str | None, who: str | None) -> list[Row]:
        # With a team, the team's index range drives the query newest first (no sort of all the team ever did);
        # its rows carry the event's time, so the time range is applied there.
        by_team = q.team is not None
        row, moment = ("a.", "t.") if by_team else ("", "")
        conditions: list[str] = ["t.team = ?"] if by_team else []
        params: list[Any] = [identity(q.team, "team")] if q.team is not None else []
        for name, value in (
            (column, who),
            ("server", q.server),
            ("tool", q.tool),
            ("outcome", q.outcome),
            ("method", q.method),
            ("request_id", q.request_id),
        ):
            if name is not None and value is not None:
                conditions.append(f"{row}{name} = ?")
                params.append(value)
        for operator, bound in ((">=", q.since), ("<", q.until)):
            if bound is not None:
                conditions.append(f"{moment}ts {operator} ?")
                params.append(bound)
        where = "WHERE " + " AND ".join(conditions) if conditions else ""
        if by_team:
            sql = f"{_SELECT_BY_TEAM} {where} ORDER BY t.ts DESC, t.audit_id DESC LIMIT ?"
        else:
            sql = f"{_SELECT} {where} ORDER BY ts DESC, id DESC LIMIT ?"
        params.append(max(q.limit, 0))
        return list(await self._db.fetchall(sql, params))


def _statements(events: Sequence[AuditEvent], first: int) -> Iterator[tuple[str, Iterable[tuple[Any, ...]]]]:
    """The batch's inserts, its ids from `first` on."""
    teams: list[tuple[Any, ...]] = []

    def rows() -> Iterator[tuple[Any, ...]]:
        # Made one at a time as executemany takes them: on SQLite's worker thread, which lets go of the GIL between
        # two rows (while SQLite inserts one), so the event loop's thread is never kept waiting for a whole batch.
        for offset, e in enumerate(events):
            # Not the marker of teams left out of a bounded record (it has a space: no team can be named so).
            teams.extend((team, e.ts, first + offset) for team in e.teams if " " not in team)
            yield (first + offset, *_values(e))

    yield _INSERT, rows()
    yield "INSERT INTO audit_teams (team, ts, audit_id) VALUES (?, ?, ?)", teams  # filled as the rows are made


def _subject(q: AuditQuery) -> str | None:
    if q.user is not None and q.virtual_account is not None:
        raise ValueError("filter by a user or by a virtual account, not both")
    if q.user is not None:
        return f"user:{identity(q.user, 'user')}"
    if q.virtual_account is not None:
        return f"virtualaccount:{identity(q.virtual_account, 'virtual account')}"
    return None


def _values(e: AuditEvent) -> tuple[Any, ...]:
    return (
        e.ts,
        e.request_id,
        e.subject,
        e.kind,
        e.name,
        json.dumps(list(e.teams)),
        e.endpoint,
        e.method,
        e.server,
        e.tool,
        e.called,
        e.outcome,
        e.error,
        e.latency_ms,
        e.auth_mode,
        json.dumps(list(e.forwarded_headers)),
        _detail(e.detail),
        e.target,
    )


def _detail(detail: dict[str, Any] | None) -> str | None:
    """The detail as stored; one that is not JSON-safe (AuditLog.bound renders every event's) is rendered here."""
    if detail is None:
        return None
    return detail_json(detail) or detail_json({"unrendered": render_detail(detail)})


def _event(row: Row) -> AuditEvent:
    return AuditEvent(
        ts=row["ts"],
        request_id=row["request_id"],
        subject=row["subject"],
        kind=row["kind"],
        name=row["name"],
        teams=tuple(json.loads(row["teams"])),
        endpoint=row["endpoint"],
        method=row["method"],
        server=row["server"],
        tool=row["tool"],
        called=row["called"],
        outcome=row["outcome"],
        error=row["error"],
        latency_ms=row["latency_ms"],
        auth_mode=row["auth_mode"],
        forwarded_headers=tuple(json.loads(row["forwarded_headers"])),
        detail=json.loads(row["detail"]) if row["detail"] is not None else None,
        target=row["target"],
    )

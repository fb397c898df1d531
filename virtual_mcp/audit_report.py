"""`virtual-mcp audit`: the answer to "who called what", as a table, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from virtual_mcp.audit import AuditEvent
from virtual_mcp.errors import BadRequest

FORMATS = ("table", "json", "csv")
CSV_FIELDS = (
    "time",
    "request_id",
    "subject",
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
)


def parse_time(text: str, now: float, duration: float | None) -> float:
    """An absolute ISO 8601 time (UTC unless it says otherwise: `2026-11-30`, `2026-11-30T07:00`, `...+01:00`), or,
    when `duration` is given (the parsed `15m`, `2h`, `7d`), that long before `now`."""
    if duration is not None:
        return now - duration
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"invalid time {text!r}: use ISO 8601 (2026-11-30T07:00, UTC unless an offset is given) "
            "or a duration ago (15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(events: Sequence[AuditEvent], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for event in events:
            out.write(json.dumps({"time": iso(event.ts), **event.as_dict()}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for e in events:
            writer.writerow(
                (
                    iso(e.ts),
                    e.request_id,
                    e.subject,
                    " ".join(e.teams),
                    e.endpoint,
                    e.method,
                    e.server or "",
                    e.tool or "",
                    e.called or "",
                    e.outcome,
                    e.error or "",
                    f"{e.latency_ms:.3f}",
                    e.auth_mode or "",
                    " ".join(e.forwarded_headers),
                )
            )
    else:
        _table(events, out)


def _table(events: Sequence[AuditEvent], out: TextIO) -> None:
    header = ("TIME (UTC)", "SUBJECT", "SERVER", "TOOL", "METHOD", "OUTCOME", "MS", "DETAIL")
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts)),
            e.subject,
            e.server or "-",
            e.tool or "-",
            e.method,
            e.outcome,
            f"{e.latency_ms:.1f}",
            (e.error or "")[:80],
        )
        for e in events
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, str(row[-1])]).rstrip() + "\n")
    if not rows:
        out.write("(no matching records)\n")

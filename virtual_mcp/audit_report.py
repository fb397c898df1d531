"""`virtual-mcp audit`: the answer to "who called what", as a table, JSON lines or CSV.

Records hold what callers chose (a tool name, a URL path, a JSON-RPC method), so every format is written to be
safe where it is read: JSON escapes everything non-ASCII (a terminal never meets a raw control or bidi override);
the table shows every control, format and separator character as a visible escape (`\x1b`, `\u202e`); CSV does the
same and defuses values a spreadsheet would run as a formula (OWASP "CSV injection": a leading `=`, `+`, `-`, `@`,
tab or carriage return gets a `'` in front).
"""

from __future__ import annotations

import csv
import json
import time
import unicodedata
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
    "target",
)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


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


def visible(text: str) -> str:
    """`text` with every control, format (bidi overrides, zero-width), separator other than the space, surrogate,
    private-use and unassigned character written as an escape, so it shows as what it is and does nothing."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def cell(text: str) -> str:
    """A CSV value: visible (see `visible`), and never something a spreadsheet would evaluate."""
    text = visible(text)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def render(events: Sequence[AuditEvent], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for event in events:
            out.write(json.dumps({"time": iso(event.ts), **event.as_dict()}) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for e in events:
            writer.writerow(
                (
                    iso(e.ts),
                    cell(e.request_id),
                    cell(e.subject),
                    cell(" ".join(e.teams)),
                    cell(e.endpoint),
                    cell(e.method),
                    cell(e.server or ""),
                    cell(e.tool or ""),
                    cell(e.called or ""),
                    cell(e.outcome),
                    cell(e.error or ""),
                    f"{e.latency_ms:.3f}",
                    cell(e.auth_mode or ""),
                    cell(" ".join(e.forwarded_headers)),
                    cell(e.target or ""),
                )
            )
    else:
        _table(events, out)


def _table(events: Sequence[AuditEvent], out: TextIO) -> None:
    header = ("TIME (UTC)", "SUBJECT", "SERVER", "TOOL", "METHOD", "OUTCOME", "MS", "DETAIL")
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts)),
            visible(e.subject),
            visible(e.server or "-"),
            visible(e.tool or "-"),
            visible(e.method),
            visible(e.outcome),
            f"{e.latency_ms:.1f}",
            _detail(e),
        )
        for e in events
    ]
    widths = [max(_width(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c) + " " * (width - _width(str(c))) for c, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, str(row[-1])]).rstrip() + "\n")
    if not rows:
        out.write("(no matching records)\n")


def _detail(e: AuditEvent) -> str:
    text = visible(e.error or (f"of {e.target}" if e.target else ""))
    return text if len(text) <= 80 else text[:79] + "…"


def _width(text: str) -> int:
    """Columns `text` takes in a terminal: wide (East Asian) characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

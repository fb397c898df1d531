"""What an audit record may hold: every field bounded, every string storable, the detail rendered within limits.

A record is built from what callers and backends sent: a tool name, a URL path, a JSON-RPC method, arguments, a
result. None of it may make the record large (a 4 MB tool name), unwritable (a lone surrogate that UTF-8 cannot
encode, a NaN that JSON cannot hold, a value JSON does not know) or absent (an argument nested 600 levels deep that
recursion cannot walk). So:

- every field is cut to its limit, with a visible marker saying how long it was (`clip`);
- every string is made storable on either engine: a lone surrogate is written as its escape (`\\udc80`), and so is
  a NUL in a field of its own (`\\x00`; PostgreSQL's text cannot hold one), never dropped silently;
- `detail` (a server's opted-in arguments and results) is rendered by `render_detail` within a depth, a length per
  string, a number of entries per list or object, and a total size, each with a marker where something was left out.

Nothing here can raise on any input: the base record (who, what, when, outcome) is always written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Set
from typing import Any

from virtual_mcp.logs import redact

# Per-field limits, in characters. The gateway's own values fit easily; only what a caller or a backend chose can
# reach them.
FIELD_LIMITS = {
    "kind": 32,
    "outcome": 32,
    "request_id": 64,
    "subject": 320,
    "name": 256,
    "endpoint": 256,
    "method": 64,
    "server": 256,
    "tool": 256,
    "called": 256,
    "error": 512,
    "auth_mode": 64,
    "target": 320,
}
MAX_TEAMS = 64
MAX_TEAM_CHARS = 256
MAX_FORWARDED_HEADERS = 32
MAX_HEADER_NAME_CHARS = 128

MAX_DETAIL_CHARS = 16_384  # the whole detail, as stored (JSON, non-ASCII escaped)
MAX_DETAIL_DEPTH = 16
MAX_DETAIL_ITEMS = 64  # entries of one list or object, the marker included
MAX_DETAIL_STRING = 1_024
MAX_DETAIL_KEY = 128
# A string is scrubbed of secrets before it is cut, so a cut can never leave part of one behind; only a window of
# it is scrubbed, so a 4 MB argument costs what a small one does. Secrets longer than the margin are not expected.
SCRUB_MARGIN = 16_384
REDACTED = "[REDACTED]"
_SENSITIVE_KEY = re.compile(
    r"(?i)(auth|token|secret|password|passwd|passphrase|api[_-]?key|private[_-]?key|bearer|cookie|credential|session)"
)
_SAFE_INT = 2**63


def storable(text: str) -> str:
    """`text`, encodable as UTF-8: a lone surrogate (valid in a Python string, in JSON's `\\ud800`, not in UTF-8)
    is written as its escape instead of failing the write of a whole batch of records."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _column_text(text: str) -> str:
    """`text` storable as a column of its own on either engine: also a NUL (valid in SQLite's text, never in
    PostgreSQL's) as its escape. (Inside `detail`, JSON escapes it.)"""
    return storable(text).replace("\x00", "\\x00")


def plain(text: str) -> bool:
    """Whether `text` is stored as it is (ASCII, no NUL): what `clip` within its limit returns unchanged."""
    return text.isascii() and "\x00" not in text


def clip(text: str, limit: int, full: int | None = None) -> str:
    """`text` in at most `limit` characters, storable; when cut, it ends with a marker giving its full length (or
    `full`, when `text` is already a cut of something longer)."""
    if full is None and len(text) <= limit and plain(text):
        return text
    if full is None and len(text) <= limit:
        text = _column_text(text)
        if len(text) <= limit:
            return text
    marker = f"…[truncated, {full or len(text)} chars]"
    return _column_text(text[: limit * 2])[: max(limit - len(marker), 0)] + marker


def redacted(text: str, limit: int) -> str:
    """`text` redacted like a log line and clipped to `limit`; only its start is looked at, so size costs nothing."""
    window = redact(text[: limit + SCRUB_MARGIN])
    return clip(window, limit, len(text) if len(text) > limit + SCRUB_MARGIN else None)


def bounded_list(values: tuple[str, ...], count: int, chars: int) -> tuple[str, ...]:
    """At most `count` entries of at most `chars` each; the last one says how many more were left out."""
    kept = tuple(clip(v, chars) for v in values[: count if len(values) <= count else count - 1])
    return kept if len(values) <= count else (*kept, f"…[{len(values) - len(kept)} more]")


def render_detail(
    value: Any,
    keys: frozenset[str] = frozenset(),
    scrub: Callable[[str], str] | None = None,
    *,
    by_name: bool = True,
) -> Any:
    """`value` as JSON-safe data within the detail limits: keys in `keys` (lower case) or, with `by_name`, that look
    like credentials have their values replaced; strings are scrubbed of secrets (`scrub`) and redacted like log
    lines; deeper, longer or larger parts are replaced by markers. Without `by_name` (a detail the gateway composed
    itself, such as a revocation's `gateway_tokens_revoked` count) only configured `keys` are replaced."""
    return _Renderer(keys, scrub, by_name).render(value, 0)


def render_parts(
    parts: Mapping[str, Any], keys: frozenset[str] = frozenset(), scrub: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """`render_detail` of each of `parts` (named by the gateway, so never redacted by name), within one budget."""
    renderer = _Renderer(keys, scrub, by_name=True)
    return {name: renderer.render(value, 1) for name, value in parts.items()}


class _Renderer:
    def __init__(self, keys: frozenset[str], scrub: Callable[[str], str] | None, by_name: bool) -> None:
        self.keys = keys
        self.scrub = scrub
        self.by_name = by_name
        # What the rendering may still take, counted as stored (compact JSON, non-ASCII escaped). Room is kept for the
        # one marker each open container may add once it is spent, so the whole stays within MAX_DETAIL_CHARS.
        self.left = MAX_DETAIL_CHARS - MAX_DETAIL_DEPTH * 48

    def render(self, value: Any, depth: int) -> Any:
        if self.left <= 0:
            return self._take("…[left out: detail size limit]")
        if value is None or isinstance(value, bool):
            self.left -= 5
            return value
        if isinstance(value, int):
            if -_SAFE_INT < value < _SAFE_INT:
                self.left -= 20
                return value
            return self._take(f"…[integer of {value.bit_length()} bits]")
        if isinstance(value, float):
            if math.isfinite(value):
                self.left -= 24
                return value
            return self._take(f"…[{value}]")  # NaN and infinities are not JSON
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, Mapping):
            if depth >= MAX_DETAIL_DEPTH:
                return self._take(f"…[object nested deeper than {MAX_DETAIL_DEPTH} levels]")
            return self._object(value, depth)
        if isinstance(value, list | tuple | Set):
            if depth >= MAX_DETAIL_DEPTH:
                return self._take(f"…[list nested deeper than {MAX_DETAIL_DEPTH} levels]")
            return self._list(list(value) if isinstance(value, Set) else value, depth)
        if isinstance(value, bytes | bytearray | memoryview):
            return self._take(f"…[{len(value)} bytes]")
        return self._take(f"…[{type(value).__name__}]")  # never str() a value of unknown type: it may be anything

    def _object(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.left -= 2
        total = len(value)
        for index, (raw_key, item) in enumerate(value.items()):
            if self.left <= 0 or (total > MAX_DETAIL_ITEMS and index == MAX_DETAIL_ITEMS - 1):
                out["…"] = self._take(f"[{total - index} more entries]")
                break
            key = clip(_key(raw_key), MAX_DETAIL_KEY)
            if key in out:  # 1 and "1" after the repr: keep both
                key = clip(f"{key} ({index})", MAX_DETAIL_KEY)
            self.left -= _stored_len(key) + 2
            sensitive = key.lower() in self.keys or (self.by_name and _SENSITIVE_KEY.search(key) is not None)
            out[key] = self._take(REDACTED) if sensitive else self.render(item, depth + 1)
        return out

    def _list(self, value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        self.left -= 2
        total = len(value)
        out: list[Any] = []
        for index, item in enumerate(value):
            if self.left <= 0 or (total > MAX_DETAIL_ITEMS and index == MAX_DETAIL_ITEMS - 1):
                out.append(self._take(f"…[{total - index} more items]"))
                break
            out.append(self.render(item, depth + 1))
        return out

    def _text(self, text: str) -> str:
        window = text[: MAX_DETAIL_STRING + SCRUB_MARGIN]
        if self.scrub is not None:
            window = self.scrub(window)
        window = storable(redact(window))
        # What is left of the whole detail's budget bounds the string too (never below a readable stub).
        room = max(min(MAX_DETAIL_STRING, self.left), 32)
        if len(window) <= room and len(text) <= MAX_DETAIL_STRING + SCRUB_MARGIN:
            return self._take(window)
        marker = f"…[truncated, {len(text)} chars]"
        return self._take(window[: max(room - len(marker), 0)] + marker)

    def _take(self, text: str) -> str:
        self.left -= _stored_len(text)
        return text


def _key(key: Any) -> str:
    """An object key as a string: JSON's keys are strings; a Python mapping's may be anything."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return repr(key)[:MAX_DETAIL_KEY]
    return f"[{type(key).__name__}]"


def _stored_len(text: str) -> int:
    """The length of `text` as the database stores it (inside JSON, with everything non-ASCII escaped)."""
    return len(json.dumps(text)) if not text.isascii() or not text.isprintable() else len(text) + 2


def detail_json(value: Any) -> str | None:
    """`value` as compact JSON within the detail limits if it is (a rendered detail is), else None."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    return text if len(text) <= MAX_DETAIL_CHARS else None

"""Logging setup: one line per record (JSON or text), with a redaction filter that runs on every record.

Redaction is a safety net, not a licence: code never logs secret values on purpose (and the credentials presented to
a backend are removed from its answers where they enter the gateway). The filter removes credential values (bearer
and basic credentials, JWTs, gateway tokens, `password=...`-style fields) and leaves the words around them.
"""

from __future__ import annotations

import json
import logging
import numbers
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import IO, Any

# The id of the request being served (also in its audit records and its `x-request-id` response header).
REQUEST_ID: ContextVar[str | None] = ContextVar("virtual_mcp_request_id", default=None)

# What a credential value is made of (RFC 6750 b64token, plus the quote-free characters of API keys and cookies).
_VALUE = r"[A-Za-z0-9._~+/=-]+"
_BEARER = re.compile(rf"(?i)\b(bearer|basic)(\s+)({_VALUE})")
# `name=value` (no space: an assignment), `"name": "value"` (a JSON field) or `name: value` (may be prose).
_FIELD = re.compile(
    r"(?i)\b([a-z_-]*?(?:authorization|token|secret|password|passwd|api[_-]?key|cookie))"
    r"(?:(=)([^\s\",}&]+)|(\"\s*:\s*\")([^\"]+)|(\s*:\s*)([^\s\",}]+))"
)
_OTHERS = (
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[REDACTED-JWT]"),
    (re.compile(r"\bvmcp_[0-9a-f]{12}_[A-Za-z0-9.-]+"), "vmcp_[REDACTED]"),
)
_MIN_TOKEN_CHARS = 8
# No English word the gateway writes is this long: a value of this length is a credential whatever its letters.
_LONGEST_WORD = 15


def looks_like_credential(value: str) -> bool:
    """Whether a word after "Bearer" or "token:" is a credential rather than the gateway's own prose ("missing
    bearer token", "invalid token: signature has expired"): credentials are long and carry digits or inner capitals;
    words do not, nor are they longer than any word the gateway writes."""
    if len(value) < _MIN_TOKEN_CHARS:
        return False
    if len(value) > _LONGEST_WORD:
        return True
    return any(c.isdigit() for c in value) or any(c.isupper() for c in value[1:]) or any(c in "+/=~" for c in value)


def _bearer(match: re.Match[str]) -> str:
    scheme, space, value = match.groups()
    return f"{scheme}{space}[REDACTED]" if looks_like_credential(value) else match.group(0)


def _field(match: re.Match[str]) -> str:
    name, equals, _, json_sep, _, colon, stated = match.groups()
    if equals is not None:
        return f"{name}=[REDACTED]"
    if json_sep is not None:
        return f"{name}{json_sep}[REDACTED]"
    # `name: value` reads the same in a message and in a header dump: only a credential-looking value is one.
    return f"{name}{colon}[REDACTED]" if looks_like_credential(stated) else match.group(0)


def redact(text: str) -> str:
    """`text` without credential values: bearer and basic credentials, `secret=...`-style fields, JWTs and gateway
    tokens. The gateway's own words around them ("missing bearer token") are left as they are."""
    text = _BEARER.sub(_bearer, text)
    text = _FIELD.sub(_field, text)
    for pattern, replacement in _OTHERS:
        text = pattern.sub(replacement, text)
    return text


# C0 and C1 controls (CR and LF among them), DEL, and the Unicode line and paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(text: str) -> str:
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


class _Rendered:
    """A log argument that is not a number, rendered (as %s or %r) with its control characters escaped."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __str__(self) -> str:
        return _escaped(str(self._value))

    def __repr__(self) -> str:
        return _escaped(repr(self._value))


def _safe(value: object) -> object:
    if value is None or isinstance(value, numbers.Number):
        return value
    return _Rendered(value)  # text too: escaped once whether formatted with %s or %r


def safe_args(args: tuple[object, ...] | Mapping[str, object]) -> tuple[object, ...] | dict[str, object]:
    """A record's arguments with every control character escaped (`\\r`, `\\n`, `\\x1b`...). The values logged
    for a request (a path, a header, a tool name) are the caller's: escaped, a CR/LF in one cannot start a forged
    log line, nor a terminal escape sequence reach whoever reads the log. The message's own format string is the
    gateway's and keeps its line breaks."""
    if isinstance(args, Mapping):
        return {key: _safe(value) for key, value in args.items()}
    return tuple(_safe(value) for value in args)


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = safe_args(record.args)
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request it was logged for, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry)


def line_handler(json_lines: bool = False, stream: IO[str] | None = None) -> logging.Handler:
    """The gateway's handler: one line per record (JSON or text) on `stream` (standard error), through the
    redaction and request-id filters."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    return handler


def configure(level: str = "info", json_lines: bool = False) -> None:
    handler = line_handler(json_lines)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "mcp", "uvicorn.access", "fastmcp", "sse_starlette"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

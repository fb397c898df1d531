"""Logging setup: one line per record (JSON or text), with a redaction filter that runs on every record.

Redaction is a safety net, not a licence: code never logs secret values on purpose. The filter scrubs bearer
tokens, `tfy-secret` values that were resolved by mistake, and values of credential-looking `key=value` pairs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import Any

# The id of the request being served (also in its audit records and its `x-request-id` response header).
REQUEST_ID: ContextVar[str | None] = ContextVar("virtual_mcp_request_id", default=None)

_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    (
        re.compile(r"(?i)\b(authorization|token|secret|password|api[_-]?key|cookie)(\"?\s*[:=]\s*\"?)[^\s\",}]+"),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[REDACTED-JWT]"),
    (re.compile(r"\bvmcp_[0-9a-f]{12}_[A-Za-z0-9.-]+"), "vmcp_[REDACTED]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
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


def configure(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "mcp", "uvicorn.access", "fastmcp", "sse_starlette"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

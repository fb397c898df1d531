"""Reading what a client sent: media types and the JSON-RPC envelope, as both eras' transports require them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_types import JSONRPCNotification
from pydantic import ValidationError

ACCEPT_JSON = frozenset({"application/json", "application/*", "*/*"})
ACCEPT_SSE = frozenset({"text/event-stream", "text/*", "*/*"})


def accepts(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(JSON, event stream): what the Accept header allows (RFC 9110 wildcards included)."""
    types = {part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")}
    return bool(types & ACCEPT_JSON), bool(types & ACCEPT_SSE)


def is_request(message: Mapping[str, Any]) -> bool:
    """A JSON-RPC request (not a notification, not a response). `http.parse_envelope` has checked the rest of the
    envelope already ("jsonrpc": "2.0", a string method, a string or integer id)."""
    params = message.get("params")
    return "id" in message and isinstance(message.get("method"), str) and (params is None or isinstance(params, dict))


def is_notification(message: Mapping[str, Any]) -> bool:
    if "id" in message:
        return False
    try:
        JSONRPCNotification.model_validate(message)
    except ValidationError:
        return False
    return True

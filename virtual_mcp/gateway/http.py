"""HTTP plumbing of the front door: bounded body reads, envelope checks, body replay (error answers:
`virtual_mcp.error_responses`)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope

from virtual_mcp.audit_bounds import FIELD_LIMITS, redacted
from virtual_mcp.error_responses import error_response
from virtual_mcp.errors import BadRequest


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | Response:
    """The whole request body, or a 413 answer as soon as it is known to exceed `limit`."""
    too_large = error_response(413, BadRequest.jsonrpc_code, f"Request body too large (limit {limit} bytes)")
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client went away (or the server cut a body that took too long): never act on part of a body.
            return error_response(400, BadRequest.jsonrpc_code, "Bad Request: the request body was not complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def requested_method(scope: Scope, receive: Receive, limit: int) -> str:
    """The JSON-RPC method a request asked for, for the record of a refusal: the `method` of a POST's body (read up
    to `limit`), else the HTTP method. Never the `Mcp-Method` header: the caller writes it, and it need not agree
    with the body the gateway would have acted on."""
    if scope.get("method") == "POST":
        body = await read_body(scope, receive, limit)
        if isinstance(body, bytes):
            message, _ = parse_envelope(body)
            if message is not None and isinstance(message.get("method"), str):
                return redacted(message["method"], FIELD_LIMITS["method"])
            return "HTTP POST (no JSON-RPC method)"
    return f"HTTP {scope.get('method', '?')}"


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a request's Content-Type is `application/json` (any parameters), as the MCP transports require."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


def parse_envelope(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The body as one JSON-RPC message, and what makes valid JSON not one (malformed JSON is neither: it is left
    to the transport, which answers -32700)."""
    try:
        # As strict as the SDK's parser: UTF-8 only, no byte-order mark (json.loads would guess UTF-16 or skip a BOM).
        message = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, None
    if isinstance(message, list):
        return None, "batches are not supported; send one JSON-RPC message per request"
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None, 'body must be one JSON-RPC 2.0 object with "jsonrpc": "2.0"'
    if not isinstance(message.get("method"), str) and not (
        "id" in message and ("result" in message or "error" in message)
    ):
        return None, 'a JSON-RPC request needs a string "method"'
    if "method" in message and "id" in message and not is_request_id(message["id"]):
        # Not a notification either: a request whose id is wrong must be told so, not silently accepted (202).
        return None, '"id" must be a string or an integer (MCP allows no null, fractional, boolean or structured id)'
    return message, None


def is_request_id(value: object) -> bool:
    """An MCP request id: a string or an integer, never null (MCP 2025-11-25 basic/index, "Requests")."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))

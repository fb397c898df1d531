"""The MCP wire for the benchmark's one request (`tools/call` of `echo`) in both protocol eras.

Kept to raw HTTP on purpose: the load generator (wrk) sends exactly these bytes, and the harness uses the same
helpers to check each target answers correctly before loading it and to open 2025-11-25 sessions for wrk.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import httpx

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ERAS = (MODERN, LEGACY)

TOOL = "echo"
# What every call echoes; the load generator counts a response as good only if it carries this text back.
ECHO_TEXT = "virtual-mcp bench ping 0123456789"

BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class ProtocolError(Exception):
    """A target answered, but not with a correct MCP result."""


def call_body(era: str, request_id: int = 1) -> str:
    params: dict[str, Any] = {"name": TOOL, "arguments": {"text": ECHO_TEXT}}
    if era == MODERN:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def call_headers(era: str, session_id: str | None = None) -> dict[str, str]:
    """Headers of a `tools/call` request; a 2025-11-25 request also carries its session (if the server made one)."""
    headers = dict(BASE_HEADERS)
    headers["Mcp-Protocol-Version"] = era
    if era == MODERN:
        headers["Mcp-Method"] = "tools/call"
        headers["Mcp-Name"] = TOOL
    elif session_id:
        headers["Mcp-Session-Id"] = session_id
    return headers


def parse_response(response: httpx.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response for `request_id` from a JSON or an SSE body."""
    if response.status_code != 200:
        raise ProtocolError(f"HTTP {response.status_code}: {response.text[:300]}")
    content_type = response.headers.get("content-type", "")
    candidates: list[str]
    if content_type.startswith("text/event-stream"):
        candidates = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    else:
        candidates = [response.text]
    for raw in candidates:
        if not raw:
            continue
        message = json.loads(raw)
        if isinstance(message, dict) and message.get("id") == request_id:
            return message
    raise ProtocolError(f"no response with id {request_id} in: {response.text[:300]}")


@dataclass
class Session:
    """A 2025-11-25 session opened for one load-generator connection. `id` is None on a stateless server."""

    id: str | None


def open_session(client: httpx.Client, url: str) -> Session:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
    }
    response = client.post(url, content=json.dumps(body), headers=BASE_HEADERS)
    message = parse_response(response, 0)
    if "error" in message:
        raise ProtocolError(f"initialize failed: {message['error']}")
    version = message.get("result", {}).get("protocolVersion")
    if version != LEGACY:
        raise ProtocolError(f"initialize negotiated {version!r}, not {LEGACY}")
    session_id = response.headers.get("mcp-session-id")
    headers = dict(BASE_HEADERS)
    headers["Mcp-Protocol-Version"] = LEGACY
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    note = client.post(
        url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), headers=headers
    )
    if note.status_code not in (200, 202, 204):
        raise ProtocolError(f"notifications/initialized: HTTP {note.status_code}: {note.text[:300]}")
    return Session(session_id)


def close_session(client: httpx.Client, url: str, session: Session) -> None:
    if not session.id:
        return
    headers = {"Mcp-Session-Id": session.id, "Mcp-Protocol-Version": LEGACY}
    with contextlib.suppress(httpx.HTTPError):  # best effort: the target is stopped at the end anyway
        client.delete(url, headers=headers)


def check_call(client: httpx.Client, url: str, era: str, session: Session | None = None, timeout: float = 10.0) -> None:
    """One `tools/call`, checked: it must succeed and echo ECHO_TEXT back. Raises ProtocolError otherwise."""
    headers = call_headers(era, session.id if session else None)
    response = client.post(url, content=call_body(era, 7), headers=headers, timeout=timeout)
    message = parse_response(response, 7)
    if "error" in message:
        raise ProtocolError(f"tools/call error: {json.dumps(message['error'])[:300]}")
    result = message.get("result", {})
    if result.get("isError"):
        raise ProtocolError(f"tools/call isError: {json.dumps(result)[:300]}")
    texts = [item.get("text") for item in result.get("content", []) if isinstance(item, dict)]
    if ECHO_TEXT not in texts:
        raise ProtocolError(f"tools/call did not echo the text: {json.dumps(result)[:300]}")

"""How answers are put on the wire: one JSON body, or one event stream of JSON-RPC messages with keepalive comments.

`Answer` is one request's answer in either era. It starts as nothing; the first notification (or a keepalive, once the
answer has taken `keepalive.INTERVAL` seconds) commits it to an event stream; a final message sent before that goes
out as a plain JSON body where the era allows it (2026-07-28), as a one-event stream otherwise (2025-11-25 requests are
answered with an event stream, as the SDK's transport does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS
from starlette.types import Send

from virtual_mcp.error_responses import error_body
from virtual_mcp.errors import INVALID_REQUEST, GatewayError
from virtual_mcp.gateway.wire.keepalive import Keepalive

Headers = Sequence[tuple[bytes, bytes]]
SSE_HEADERS: Headers = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
)
JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
KEEPALIVE = b": ping\r\n\r\n"


def encode(message: Mapping[str, Any]) -> bytes:
    # ASCII escapes: a lone surrogate a backend sent in a string still makes valid JSON text.
    return json.dumps(message, separators=(",", ":")).encode()


def sse_event(message: Mapping[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + encode(message) + b"\r\n\r\n"


def response(request_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error(request_id: Any, error_object: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error_object}


def notification(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def status_of(message: Mapping[str, Any]) -> int:
    """The HTTP status of a JSON answer: 200, or the one the spec's table gives the error's code."""
    failure = message.get("error")
    code = failure.get("code") if isinstance(failure, dict) else None
    return ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200


async def send_json(
    send: Send, message: Mapping[str, Any] | None, status: int | None = None, headers: Headers = ()
) -> None:
    """One JSON body (`None`: an empty one, e.g. 202 for a notification)."""
    body = encode(message) if message is not None else b""
    code = status if status is not None else (status_of(message) if message is not None else 200)
    head = [*JSON_HEADERS, *headers] if message is not None else list(headers)
    head.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": code, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, status: int, message: str, code: int = INVALID_REQUEST, headers: Headers = ()) -> None:
    """An HTTP refusal with a JSON-RPC error body that has no request id (`error_responses.error_body`, the body
    every layer refuses with)."""
    body = error_body(code, message)
    head = [*JSON_HEADERS, *headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def refuse_with(send: Send, exc: GatewayError) -> None:
    """A gateway error as its own HTTP answer (status, headers such as Retry-After)."""
    headers = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.http_headers.items())
    await refuse(send, exc.http_status, exc.told, exc.jsonrpc_code, headers)


class Answer:
    """One request's answer (see the module's docstring). Writes are serialised: a keepalive due while an event goes
    out waits for it, and nothing is written after the last message."""

    def __init__(self, send: Send, keepalive: Keepalive, *, json_allowed: bool, headers: Headers = ()) -> None:
        self._send = send
        self._keepalive = keepalive
        self._json_allowed = json_allowed
        self._headers = headers
        self._lock = anyio.Lock()
        self._started = False
        self._ended = False
        keepalive.watch(self)

    @property
    def streaming(self) -> bool:
        return self._started

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        """A notification that belongs to the request (progress, a log message)."""
        await self._write(sse_event(notification(method, params)), last=False)

    async def event(self, message: Mapping[str, Any]) -> None:
        await self._write(sse_event(message), last=False)

    async def ping(self) -> None:
        await self._write(KEEPALIVE, last=False)

    async def finish(self, message: Mapping[str, Any] | None) -> None:
        """The last message (None: end an event stream without one, as when a session ends under its request)."""
        self._keepalive.forget(self)
        async with self._lock:
            if self._ended:
                return
            if not self._started and self._json_allowed and message is not None:
                self._ended = True
                await send_json(self._send, message, headers=self._headers)
                return
            await self._write_locked(sse_event(message) if message is not None else b"", last=True)

    def abandon(self) -> None:
        """Nothing more will be written (the client is gone, or the request ended some other way)."""
        self._keepalive.forget(self)
        self._ended = True

    async def _write(self, body: bytes, last: bool) -> None:
        async with self._lock:
            await self._write_locked(body, last)

    async def _write_locked(self, body: bytes, last: bool) -> None:
        if self._ended:
            return
        if not self._started:
            self._started = True
            await self._send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *self._headers]})
        self._ended = last
        await self._send({"type": "http.response.body", "body": body, "more_body": not last})

"""Hostile backends for failure tests: a refused port, a server that never answers, servers that answer garbage.

Like `tests.support`, everything runs on real loopback sockets and nothing sleeps: a hanging request waits on an
event that the test (or the gateway hanging up) sets.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support import Served, bind, serve


def refused_port() -> int:
    """A loopback port nobody listens on: bound, then closed, so connecting to it is refused."""
    sock = bind()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, and whether the client hung up while sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _respond(send: Send, status: int, content_type: str, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})


class Hang:
    """Accepts every request, reads it, and never answers until released (or the caller hangs up)."""

    def __init__(self) -> None:
        self.requests = 0
        self.arrived = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        self._released.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        self.requests += 1
        self.arrived.set()
        _, gone = await _read_body(receive)
        if gone:
            return
        hung_up = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal hung_up
                while (await receive())["type"] != "http.disconnect":
                    pass
                hung_up = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._released.wait()
            tg.cancel_scope.cancel()
        if not hung_up:
            await _respond(send, 503, "text/plain", b"released at the end of the test")


@asynccontextmanager
async def hanging() -> AsyncIterator[tuple[Served, Hang]]:
    """A server on loopback that accepts and never answers; released and stopped when the block ends."""
    app = Hang()
    async with serve(app) as served:
        try:
            yield served, app
        finally:
            app.release()


# What a garbage backend answers to every request: (HTTP status, content type, body).
GARBAGE: dict[str, tuple[int, str, bytes]] = {
    "html": (200, "text/html; charset=utf-8", b"<html><body><h1>It works!</h1></body></html>"),
    "json": (200, "application/json", b'{"hello": "world", "jsonrpc": "maybe"}'),
    "sse": (200, "text/event-stream", b"event: message\ndata: {this is not json\n\n"),
}


class Garbage:
    """Answers HTTP 200 to everything, with a body that is not a JSON-RPC response."""

    def __init__(self, kind: str) -> None:
        self.status, self.content_type, self.body = GARBAGE[kind]
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        self.requests += 1
        await _read_body(receive)
        await _respond(send, self.status, self.content_type, self.body)


class Cutoff:
    """A handshake-era backend (refuses `server/discover`) that drops the connection halfway through its answer
    to `initialize`: the client sees an incomplete chunked body."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body, _ = await _read_body(receive)
        method = str(json.loads(body).get("method", ""))
        self.methods.append(method)
        if method != "initialize":
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Unsupported protocol version"}}
            await _respond(send, 400, "application/json", json.dumps(error).encode())
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send(
            {"type": "http.response.body", "body": b'event: message\ndata: {"jsonrpc": "2.0", ', "more_body": True}
        )
        # Returning mid-body makes uvicorn close the connection.


class Liar:
    """Speaks a correct handshake-era handshake, then answers tools/list and tools/call with malformed results."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body, _ = await _read_body(receive)
        try:
            message = json.loads(body)
        except ValueError:
            await _respond(send, 400, "text/plain", b"bad json")
            return
        method = message.get("method", "")
        self.methods.append(method)
        if "id" not in message:
            await _respond(send, 202, "application/json", b"")
            return
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "initialize":
            answer["result"] = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "liar", "version": "1"},
            }
        elif method == "tools/list":
            answer["result"] = {"tools": "none of your business"}
        elif method == "tools/call":
            answer["result"] = "not an object"
        else:
            answer["error"] = {"code": -32601, "message": f"unknown method {method}"}
        await _respond(send, 200, "application/json", json.dumps(answer).encode())


SESSION_NOT_FOUND = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
).encode()


class Amnesiac:
    """Wraps the MCP app of a *restarted* backend: it never issued the sessions its predecessor did.

    A request carrying a session id this process did not issue is answered 404 "Session not found", exactly as
    the MCP SDK answers it, but at a moment the test chooses, so the order of events is deterministic:

    - `stagger=0` (one by one): the first such request is refused at once; later ones are held until the new
      session is established (`notifications/initialized` arrived), then refused.
    - `stagger=n`: such requests are held until `n` of them are `tools/call`s (so all were sent with the old
      session); then the first is refused, and the others are refused only once renegotiation has begun
      (`server/discover` arrived), which itself is held until every refusal has been sent.

    Every request is logged in `exchanges` as ("POST tools/call", status).
    """

    def __init__(self, app: ASGIApp, stagger: int = 0) -> None:
        self.app = app
        self.stagger = stagger
        self.issued: set[str] = set()
        self.refused: list[str] = []  # JSON-RPC methods of the requests answered 404
        self.exchanges: list[tuple[str, int]] = []
        self._stale_calls = 0
        self._held = 0
        self._release = anyio.Event()
        self._released_all = anyio.Event()
        self._renegotiating = anyio.Event()
        self._established = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, _ = await _read_body(receive)
        try:
            message = json.loads(body) if body else {}
        except ValueError:
            message = {}
        method = str(message.get("method", "")) if isinstance(message, dict) else ""
        label = f"{scope['method']} {method}".strip()
        session = dict(scope.get("headers", [])).get(b"mcp-session-id", b"").decode()
        if session and session not in self.issued:
            await self._refuse(method, label, send)
            return
        if method == "server/discover" and self.stagger:
            self._renegotiating.set()
            await self._released_all.wait()
        if method == "notifications/initialized":
            self._established.set()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.exchanges.append((label, message["status"]))
                for key, value in message.get("headers", []):
                    if key.lower() == b"mcp-session-id":
                        self.issued.add(value.decode())
            await send(message)

        await self.app(scope, replay, watch)

    async def _refuse(self, method: str, label: str, send: Send) -> None:
        if self.stagger:
            self._held += 1
            if method == "tools/call":
                self._stale_calls += 1
                if self._stale_calls >= self.stagger:
                    self._release.set()
            await self._release.wait()
            if self.refused:
                await self._renegotiating.wait()
        elif self.refused:
            await self._established.wait()
        self.refused.append(method)
        self.exchanges.append((label, 404))
        await _respond(send, 404, "application/json", SESSION_NOT_FOUND)
        if self.stagger:
            self._held -= 1
            if not self._held:
                self._released_all.set()


@asynccontextmanager
async def restartable(sock: socket.socket, app: ASGIApp) -> AsyncIterator[Served]:
    """Serve `app` on a duplicate of the listening `sock`: when the server stops, the port stays bound and
    listening (uvicorn closes only its duplicate), so a later server on another duplicate takes over the very
    same port; connections made in between wait in the backlog instead of being refused."""
    async with serve(app, sock.dup()) as served:
        yield served

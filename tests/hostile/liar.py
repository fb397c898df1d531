"""A hostile backend on a raw socket: it speaks just enough HTTP/1.1 and MCP to be taken for a backend, and then
lies in whatever way its scenario says, byte for byte (bad framing, endless bodies, drips, garbage, cookies).

Each scenario is served at its own path (`http://127.0.0.1:PORT/<scenario>`), so one process serves a whole
corpus; a scenario answers each JSON-RPC method with a `Reply`, falling back to a well-behaved 2025-11-25 backend
(or 2026-07-28 with `modern=True`) with one tool, `kept`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

# What a scenario does with one request: bytes written as they are (the connection stays open for the next
# request), or a coroutine that writes what it wants and says whether the connection may be used again.
Writer = Callable[[asyncio.StreamWriter], Awaitable[bool]]
Reply = bytes | Writer
Handler = Callable[[dict[str, Any]], Reply]

KEPT = {"name": "kept", "description": "A valid tool.", "inputSchema": {"type": "object", "properties": {}}}
OK_RESULT = {"content": [{"type": "text", "text": "ok"}]}


def http(status: int = 200, body: bytes = b"", ctype: str | None = "application/json", *extra: str) -> bytes:
    """A complete answer with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    if ctype is not None:
        lines.append(f"content-type: {ctype}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes, ctype: str = "application/json", end: bool = True) -> bytes:
    """A chunked answer: the head, a chunk per (non-empty) part, and the last chunk unless `end` is False."""
    head = f"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: {ctype}\r\n\r\n".encode()
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p)
    return head + body + (b"0\r\n\r\n" if end else b"")


def answer(message: Mapping[str, Any], result: Any = None, **fields: Any) -> dict[str, Any]:
    out = {"jsonrpc": "2.0", "id": message.get("id"), **fields}
    if result is not None:
        out["result"] = result
    return out


def rpc(message: Mapping[str, Any], result: Any = None, **fields: Any) -> bytes:
    """A JSON answer to `message` (`result`, or other fields such as `error`)."""
    return http(200, json.dumps(answer(message, result, **fields)).encode())


def sse(*events: bytes, ctype: str = "text/event-stream") -> bytes:
    """An event-stream answer (chunked, one chunk per event)."""
    return chunked(*events, ctype=ctype)


def event(data: Any, name: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    prefix = f"event: {name}\n" if name else ""
    return f"{prefix}data: {text}\n\n".encode()


def closing(raw: bytes) -> Writer:
    """Write `raw` and close the connection (a cut body, an answer that is not HTTP...)."""

    async def write(writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return False

    return write


def endless(head: bytes, piece: bytes, chunk: bool = False) -> Writer:
    """`head`, then `piece` again and again until the gateway hangs up (never an end)."""

    async def write(writer: asyncio.StreamWriter) -> bool:
        writer.write(head)
        framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunk else piece
        while True:
            writer.write(framed)
            await writer.drain()

    return write


def drip(raw: bytes, every: float) -> Writer:
    """`raw` one byte at a time, `every` seconds apart: the backend's pace is the fault under test (bytes keep
    coming, so only a deadline on the whole answer ends it), not a test waiting for something."""

    async def write(writer: asyncio.StreamWriter) -> bool:
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)
        return False

    return write


def hang() -> Writer:
    async def write(writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    return write


@dataclass
class Scenario:
    handlers: dict[str, Handler] = field(default_factory=dict)
    modern: bool = False  # answer server/discover: a sessionless 2026-07-28 backend


@dataclass
class Liar:
    scenarios: dict[str, Scenario]
    port: int = 0
    cookies: list[str] = field(default_factory=list)  # every Cookie header that reached it
    seen: list[tuple[str, str]] = field(default_factory=list)  # (scenario, JSON-RPC method) of every POST
    _sessions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # the gateway hung up
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        verb, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if "cookie" in headers:
            self.cookies.append(headers["cookie"])
        name = path.strip("/")
        scenario = self.scenarios[name]
        if verb != "POST":
            reply: Reply = http(200 if verb == "DELETE" else 405, b"", None)
        else:
            message = json.loads(body)
            method = str(message.get("method", ""))
            self.seen.append((name, method))
            handler = scenario.handlers.get(method)
            reply = handler(message) if handler is not None else self._default(scenario, message, method)
        if isinstance(reply, bytes):
            writer.write(reply)
            await writer.drain()
            return True
        return await reply(writer)

    def _default(self, scenario: Scenario, message: dict[str, Any], method: str) -> bytes:
        if "id" not in message:
            return http(202, b"", None)
        if method == "server/discover":
            if not scenario.modern:
                error = {"code": -32600, "message": "Unsupported protocol version"}
                return http(400, json.dumps(answer(message, error=error)).encode())
            result = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}
            return rpc(message, result)
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
                "serverInfo": {"name": "liar", "version": "1"},
            }
            body = json.dumps(answer(message, result)).encode()
            return http(200, body, "application/json", f"mcp-session-id: liar-{next(self._sessions)}")
        results: dict[str, Any] = {
            "tools/list": {"tools": [KEPT]},
            "tools/call": OK_RESULT,
            "resources/list": {"resources": [{"uri": "liar://kept", "name": "kept"}]},
            "resources/templates/list": {"resourceTemplates": [{"uriTemplate": "liar://{x}", "name": "kept"}]},
            "prompts/list": {"prompts": [{"name": "kept"}]},
        }
        if method in results:
            return rpc(message, results[method])
        return rpc(message, error={"code": -32601, "message": f"no {method}"})


@asynccontextmanager
async def lying(scenarios: dict[str, Scenario]) -> AsyncIterator[Liar]:
    liar = Liar(scenarios)
    server = await asyncio.start_server(liar._serve, "127.0.0.1", 0, limit=1 << 20)
    liar.port = server.sockets[0].getsockname()[1]
    try:
        yield liar
    finally:
        server.close()


def tcp_listener() -> socket.socket:
    """A listening loopback socket that says it is TCP (IPPROTO_TCP). asyncio turns Nagle off only on connections
    whose socket does (accepted ones inherit the listener's); `tests.support.bind` makes protocol-0 sockets, on
    which every answer uvicorn writes in two parts waits ~40 ms for the client's delayed ACK. This corpus sends a
    few hundred requests, so its gateway and good backend listen on these."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock

"""A backend's log messages sent outside any request (on its own GET stream, or a stdio process's stdout while no
call is in flight) reach the 2025-11-25 caller sessions of the principal whose backend session sent them, that opted
in with `logging/setLevel`, at the level each chose; nobody else's, and nothing from a session shared by every
caller. Real fastmcp backend and clients, real stdio process."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types
from fastmcp import Client, Context, FastMCP
from fastmcp.client.transports import StreamableHttpTransport
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import secure_gateway
from tests.support import REPO, LegacyOnly, serve
from virtual_mcp.types import PrincipalKind

ALICE, BOB = "alice@northwind.example", "bob@northwind.example"


class Streams:
    """Which backend sessions have their GET stream open: the backend tells nobody before then (a message sent
    outside a request while no stream is open is dropped by the SDK)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.open: dict[str, anyio.Event] = {}

    def opened(self, session_id: str) -> anyio.Event:
        return self.open.setdefault(session_id, anyio.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        session_id = dict(scope["headers"]).get(b"mcp-session-id", b"").decode()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start" and message["status"] == 200:
                self.opened(session_id).set()

        await self.app(scope, receive, sending)


def chatty_backend(streams: Streams) -> FastMCP:
    mcp = FastMCP("chatty")

    @mcp.tool
    async def announce(text: str, ctx: Context) -> str:
        """Answers; then, outside this request (on the session's GET stream), logs `text` at warning and at info."""
        with anyio.fail_after(10):
            await streams.opened(ctx.session_id).wait()
        for level in ("warning", "info"):
            await ctx.session.send_log_message(level, f"{level}: {text}", logger="chatty")
        return "announced"

    return mcp


class Inbox:
    """The log messages one client session received."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, mcp_types.LoggingMessageNotification):
            self.said.append(str(root.params.data))
            self._arrived.set()

    async def until(self, text: str) -> None:
        with anyio.fail_after(10):
            while text not in self.said:
                await self._arrived.wait()
                self._arrived = anyio.Event()


@asynccontextmanager
async def lab(tmp_path: Path, **server: Any) -> AsyncIterator[tuple[Any, str]]:
    streams = Streams()
    streams.app = LegacyOnly(chatty_backend(streams).http_app(path="/mcp"))
    async with serve(streams) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group("lab", remote("chatty", backend.url, **server)))
        write_identities(config, {PLATFORM: [ALICE, BOB]})
        async with secure_gateway(config, tmp_path / "data") as gw:
            yield gw, f"{gw.url}/mcp-server/lab/chatty/server"


def client(url: str, token: str, inbox: Inbox) -> Client[Any]:
    return Client(StreamableHttpTransport(url, auth=token), mode="legacy", message_handler=inbox)


async def test_a_log_outside_any_call_reaches_its_principals_opted_in_sessions_only(tmp_path: Path) -> None:
    async with lab(tmp_path) as (gw, url):
        alice, bob = await gw.token(PrincipalKind.USER, ALICE), await gw.token(PrincipalKind.USER, BOB)
        warned, quiet, bobs = Inbox(), Inbox(), Inbox()
        async with client(url, alice, warned) as a, client(url, alice, quiet) as a2, client(url, bob, bobs) as b:
            await a.set_logging_level("warning")
            await b.set_logging_level("debug")
            assert (await a.call_tool("announce", {"text": "one"})).data == "announced"
            await b.call_tool("announce", {"text": "bob"})
            await bobs.until("warning: bob")
            await warned.until("warning: one")
            await a2.call_tool("announce", {"text": "two"})  # Alice's backend session: her opted-in session hears it
            await warned.until("warning: two")
            await bobs.until("info: bob")
            assert warned.said == ["warning: one", "warning: two"]  # at the level she chose
            assert bobs.said == ["warning: bob", "info: bob"]  # his own only, every level
            assert quiet.said == []  # never opted in


async def test_a_shared_backend_sessions_logs_outside_calls_reach_nobody(tmp_path: Path) -> None:
    async with lab(tmp_path, upstream_session="shared") as (gw, url):
        alice = await gw.token(PrincipalKind.USER, ALICE)
        inbox = Inbox()
        async with client(url, alice, inbox) as a:
            await a.set_logging_level("debug")
            await a.call_tool("announce", {"text": "one"})
            # Nobody's: nothing watches a shared session for logs, so its GET stream is never asked for.
            assert not any(s.watched for s in gw.runtime.pool._sessions.values())
        assert inbox.said == []


STDIO_CHATTY = """
import json, os, sys, threading
lock = threading.Lock()
def send(message):
    with lock:
        print(json.dumps(message), flush=True)
def fifo():
    with open(os.environ["CHATTY_FIFO"]) as triggers:
        for line in triggers:
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "warning", "logger": "chatty", "data": line.strip()}})
listening = None
for line in sys.stdin:
    message = json.loads(line)
    method, request_id = message.get("method"), message.get("id")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "logging": {}},
                  "serverInfo": {"name": "chatty", "version": "1"}}
        send({"jsonrpc": "2.0", "id": request_id, "result": result})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": [
            {"name": "hello", "description": "hello", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call":  # only a caller's process is called: it alone listens to the FIFO
        send({"jsonrpc": "2.0", "method": "notifications/message",
              "params": {"level": "info", "logger": "chatty", "data": "during hello"}})
        send({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "hi"}]}})
        if not listening:
            listening = threading.Thread(target=fifo, daemon=True)
            listening.start()
    elif request_id is not None:
        send({"jsonrpc": "2.0", "id": request_id, "result": {}})
"""


def chatty_stdio(tmp_path: Path, **fields: Any) -> tuple[Path, Path]:
    """A servers.d with the chatty stdio server (`fields`: the rest of its entry), and the FIFO that makes it log."""
    script, triggers = tmp_path / "chatty.py", tmp_path / "triggers"
    script.write_text(STDIO_CHATTY)
    os.mkfifo(triggers)
    server = remote("chatty", "unused", **fields)
    del server["url"]
    server.update(transport="stdio", command=sys.executable, args=[str(script)], cwd=str(REPO))
    server["env"] = {"CHATTY_FIFO": str(triggers)}
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "lab.yaml").write_text(group("lab", server))
    write_identities(config, {PLATFORM: [ALICE]})
    return config, triggers


async def test_a_stdio_servers_log_while_no_call_is_in_flight_reaches_its_principal(tmp_path: Path) -> None:
    """The stdio server logs during a call (to that call's caller, in either era), and when the test writes to its
    FIFO, with no call in flight: to the caller session that opted in, on its GET stream."""
    config, triggers = chatty_stdio(tmp_path)
    async with secure_gateway(config, tmp_path / "data", list_deadline_seconds=30) as gw:
        alice = await gw.token(PrincipalKind.USER, ALICE)
        inbox = Inbox()
        async with client(f"{gw.url}/mcp-server/lab/chatty/server", alice, inbox) as a:
            await a.set_logging_level("info")
            await a.call_tool("hello", {})  # her process is started and watched; its log during the call is hers
            async with await anyio.open_file(triggers, "w") as fifo:
                await fifo.write("between calls\n")
                await fifo.flush()
                await inbox.until("between calls")
        assert inbox.said == ["during hello", "between calls"]
        # A 2026-07-28 caller has no channel outside its requests, but a log during its call is relayed on it.
        modern = Inbox()
        transport = StreamableHttpTransport(f"{gw.url}/mcp-server/lab/chatty/server", auth=alice)
        async with Client(transport, mode="2026-07-28", message_handler=modern) as m:
            await m.call_tool("hello", {})
        assert modern.said == ["during hello"]


async def test_a_shared_stdio_process_logs_to_no_callers_call(tmp_path: Path) -> None:
    """A process every caller shares (`upstream_session: shared`) cannot say whose call a log is about: it reaches
    nobody, not even the one call in flight."""
    config, _ = chatty_stdio(tmp_path, upstream_session="shared")
    async with secure_gateway(config, tmp_path / "data", list_deadline_seconds=30) as gw:
        alice = await gw.token(PrincipalKind.USER, ALICE)
        inbox = Inbox()
        async with client(f"{gw.url}/mcp-server/lab/chatty/server", alice, inbox) as a:
            await a.set_logging_level("debug")
            assert (await a.call_tool("hello", {})).content
        assert inbox.said == []

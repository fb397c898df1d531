"""A backend that keeps state per MCP session, as many real backends do, and reports what reached it.

`remember` stores a value in the calling session (fastmcp's session state), `recall` and the `note://current`
resource read it back, `wait` holds a call open until the test releases it. Wrapped in `LegacyOnly`, it speaks only
2025-11-25, where a session lives across requests; unwrapped, fastmcp also speaks 2026-07-28, where every request is
its own session and nothing is kept.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastmcp import Context, FastMCP
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support import LegacyOnly


class Seen:
    """What reached the backend: session ids used, sessions ended (DELETE), Cookie headers, calls waiting."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.deleted: list[str] = []
        self.cookies: list[str] = []
        self.requests = 0
        self.changed = anyio.Event()  # set (and replaced) whenever a DELETE arrives or a call starts waiting
        self.waiting = 0
        self.release = anyio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, check: Any, seconds: float = 10) -> None:
        """Wait (on events, no polling) until `check()` holds."""
        with anyio.fail_after(seconds):
            while not check():
                await self.changed.wait()


def build_stateful(seen: Seen) -> FastMCP:
    mcp: FastMCP = FastMCP("stateful")

    @mcp.tool
    async def remember(value: str, ctx: Context) -> str:
        """Keep `value` in this session."""
        await ctx.set_state("note", value)
        return "remembered"

    @mcp.tool
    async def recall(ctx: Context) -> str:
        """What this session was asked to remember, or `nothing`."""
        return str(await ctx.get_state("note") or "nothing")

    @mcp.tool
    def session(ctx: Context) -> str:
        """The backend session this call came in (its id)."""
        return ctx.session_id

    @mcp.tool
    async def wait(ctx: Context) -> str:
        """Hold the call open until the test releases it."""
        seen.waiting += 1
        seen.poke()
        try:
            await seen.release.wait()
        finally:
            seen.waiting -= 1
        return "released"

    @mcp.tool
    async def chatty(ctx: Context) -> str:
        """Logs at three levels."""
        await ctx.debug("debug line")
        await ctx.info("info line")
        await ctx.warning("warning line")
        return "logged"

    @mcp.resource("note://current")
    async def current(ctx: Context) -> str:
        """This session's note."""
        return str(await ctx.get_state("note") or "nothing")

    return mcp


class Recorder:
    """Records what each request carried, and can answer every response with a `Set-Cookie`."""

    def __init__(self, app: ASGIApp, seen: Seen, set_cookie: bytes | None = None) -> None:
        self.app = app
        self.seen = seen
        self.set_cookie = set_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        self.seen.requests += 1
        session = headers.get(b"mcp-session-id", b"").decode()
        if session:
            self.seen.sessions.add(session)
        if b"cookie" in headers:
            self.seen.cookies.append(headers[b"cookie"].decode())
        if scope["method"] == "DELETE":
            self.seen.deleted.append(session)
            self.seen.poke()

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start" and self.set_cookie is not None:
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", self.set_cookie)]}
            await send(message)

        await self.app(scope, receive, stamped)


def stateful_app(seen: Seen, *, legacy: bool = True, set_cookie: bytes | None = None) -> ASGIApp:
    app: ASGIApp = build_stateful(seen).http_app(path="/mcp")
    return Recorder(LegacyOnly(app) if legacy else app, seen, set_cookie)

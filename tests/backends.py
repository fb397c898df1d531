"""Backing MCP servers for tests, written with fastmcp like the ones our users run."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import anyio
from fastmcp import Context, FastMCP
from fastmcp.tools import ToolResult
from fastmcp.utilities.types import Audio, Image
from mcp_types import EmbeddedResource, TextContent, TextResourceContents, ToolListChangedNotification
from pydantic import BaseModel

from tests.sensitive import SENSITIVE

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WAV = (
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"
    b"D\xac\x00\x00\x88X\x01\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
)


class Point(BaseModel):
    x: int
    y: int


class Probe:
    """What the lab backend observed, for tests that check what reached it."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.tagged: dict[str, dict[str, str]] = {}  # the headers of each `headers` call made with a tag
        self.slow_started = anyio.Event()
        self.slow_cancelled = anyio.Event()
        self.calls = 0


def build_lab(probe: Probe | None = None, name: str = "lab") -> FastMCP:
    probe = probe or Probe()
    mcp: FastMCP = FastMCP(name)

    @mcp.tool
    def echo(text: str) -> str:
        """Echo text back."""
        probe.calls += 1
        return text

    @mcp.tool
    def add(a: int, b: int) -> int:
        """Add two integers (structured result)."""
        return a + b

    @mcp.tool
    def point(x: int, y: int) -> Point:
        """A structured object."""
        return Point(x=x, y=y)

    @mcp.tool
    def image() -> Image:
        """An image."""
        return Image(data=PNG, format="png")

    @mcp.tool
    def audio() -> Audio:
        """An audio clip."""
        return Audio(data=WAV, format="wav")

    @mcp.tool
    def embedded() -> ToolResult:
        """An embedded resource and text."""
        return ToolResult(
            content=[
                TextContent(type="text", text="see attached"),
                EmbeddedResource(
                    type="resource",
                    resource=TextResourceContents(uri="lab://notes/1", mime_type="text/plain", text="note one"),
                ),
            ]
        )

    @mcp.tool
    def fail(reason: str) -> str:
        """Always fails (isError result)."""
        raise ValueError(f"failed on purpose: {reason}")

    @mcp.tool
    async def progress(steps: int, ctx: Context) -> str:
        """Reports progress for each step."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}")
        return f"{steps} steps"

    @mcp.tool
    async def chatty(ctx: Context) -> str:
        """Logs at several levels."""
        await ctx.debug("debug line")
        await ctx.info("info line")
        await ctx.warning("warning line")
        return "logged"

    @mcp.tool
    async def slow(ctx: Context) -> str:
        """Waits until cancelled (or 30 s)."""
        probe.slow_started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            probe.slow_cancelled.set()
            raise
        return "finished"

    @mcp.tool
    def headers(ctx: Context, tag: str = "") -> dict[str, Any]:
        """The HTTP headers this request arrived with."""
        request = ctx.request_context.request if ctx.request_context else None
        seen = dict(request.headers) if request is not None else {}
        probe.headers.append(seen)
        if tag:
            probe.tagged[tag] = seen
        return seen

    @mcp.tool
    async def grow(name: str, ctx: Context) -> str:
        """Register a new tool `name` and tell this session its tool list changed, in this call's answer.

        (The gateway listens for list changes on the server's own session, and in every answer; a caller's session
        holds no standing stream of its own.)"""

        def added() -> str:
            return f"{name} works"

        mcp.tool(added, name=name)
        await ctx.session.send_notification(ToolListChangedNotification(), related_request_id=ctx.request_id)
        return f"added {name}"

    @mcp.resource("lab://notes/{note_id}")
    def note(note_id: str) -> str:
        """A note."""
        return f"note {note_id}"

    @mcp.resource("lab://readme", mime_type="text/markdown")
    def readme() -> str:
        """The lab's README."""
        return "# Lab"

    @mcp.prompt
    def review(code: str, style: str = "terse") -> str:
        """Review some code."""
        return f"Review this ({style}): {code}"

    return mcp


async def received(client: Any, probe: Probe) -> dict[str, str]:
    """The headers the lab backend received for one call of its `headers` tool through `client` (a connected
    fastmcp Client), read at the backend. The echo that reached the client must hold none of the credentials the
    call presented, nor any value the tests registered as sensitive."""
    tag = uuid.uuid4().hex
    result = await client.call_tool("headers", {"tag": tag})
    seen = probe.tagged.pop(tag)
    echoed = json.dumps(result.structured_content)
    presented = seen.get("authorization", "")
    leaked = [v for v in (presented, presented.removeprefix("Bearer "), *SENSITIVE) if len(v) >= 8 and v in echoed]
    assert not leaked, "a credential the gateway presented came back to the caller"
    return seen

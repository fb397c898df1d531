"""Resource subscriptions through the gateway (2025-11-25 sessions): a backend's `notifications/resources/updated`
(sent on its own GET stream, outside any request) reaches the session that subscribed, under the URI that session
knows, and no other session; an update for a resource nobody subscribed to reaches nobody; unsubscribing stops
them. On /mcp and on the server's own endpoint. Real fastmcp backend and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types
from fastmcp import Client, Context, FastMCP
from mcp.server.context import ServerRequestContext

from tests.support import LegacyOnly, Served, gateway, serve, write_config


def watched_backend() -> FastMCP:
    mcp = FastMCP("watched")
    subscribed: set[str] = set()

    @mcp.resource("note://a", mime_type="text/plain")
    def a() -> str:
        return "a"

    @mcp.resource("note://b", mime_type="text/plain")
    def b() -> str:
        return "b"

    @mcp.tool
    async def touch(uri: str, ctx: Context) -> list[str]:
        """Tells the session's subscribers that `uri` changed (whether or not it was subscribed to)."""
        await ctx.session.send_resource_updated(uri)
        return sorted(subscribed)

    async def subscribe(ctx: ServerRequestContext[Any], params: mcp_types.SubscribeRequestParams) -> Any:
        subscribed.add(str(params.uri))
        return mcp_types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: mcp_types.UnsubscribeRequestParams) -> Any:
        subscribed.discard(str(params.uri))
        return mcp_types.EmptyResult()

    mcp._mcp_server.add_request_handler("resources/subscribe", mcp_types.SubscribeRequestParams, subscribe)
    mcp._mcp_server.add_request_handler("resources/unsubscribe", mcp_types.UnsubscribeRequestParams, unsubscribe)
    return mcp


class Inbox:
    def __init__(self) -> None:
        self.updated: list[str] = []
        self.arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, mcp_types.ResourceUpdatedNotification):
            self.updated.append(str(root.params.uri))
            self.arrived.set()

    async def next(self) -> str:
        with anyio.fail_after(10):
            await self.arrived.wait()
        self.arrived = anyio.Event()
        return self.updated[-1]


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(LegacyOnly(watched_backend().http_app(path="/mcp"))) as backend:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {"notes": backend.url})
        async with gateway(config) as gw:
            yield gw


async def test_an_update_reaches_the_session_that_subscribed_and_no_other(tmp_path: Path) -> None:
    for endpoint, shown in (("/mcp-server/lab/notes/server", "note://a"), ("/mcp", "mcp-gateway://lab/notes/note://a")):
        async with lab(tmp_path / endpoint.strip("/").replace("/", "-")) as gw:
            watcher, bystander = Inbox(), Inbox()
            async with (
                Client(f"{gw.url}{endpoint}", mode="legacy", message_handler=watcher) as subscribed,
                Client(f"{gw.url}{endpoint}", mode="legacy", message_handler=bystander) as other,
            ):
                assert subscribed.initialize_result is not None
                await subscribed.session.subscribe_resource(shown)
                tool = "touch" if endpoint != "/mcp" else "lab__notes__touch"
                # The backend keeps one session for this caller: both sessions' calls reach it.
                assert (await other.call_tool(tool, {"uri": "note://a"})).data == ["note://a"]
                assert await watcher.next() == shown
                # An update for a resource nobody subscribed to reaches nobody; the next one still arrives.
                await other.call_tool(tool, {"uri": "note://b"})
                await subscribed.call_tool(tool, {"uri": "note://a"})
                assert await watcher.next() == shown
                assert watcher.updated == [shown, shown] and bystander.updated == []
                # Unsubscribed: the backend is told, and nothing more arrives.
                await subscribed.session.unsubscribe_resource(shown)
                assert (await other.call_tool(tool, {"uri": "note://a"})).data == []
                await subscribed.session.subscribe_resource(shown)  # a marker: updates flow again after this
                await other.call_tool(tool, {"uri": "note://a"})
                assert await watcher.next() == shown
                assert len(watcher.updated) == 3 and bystander.updated == []


async def test_a_resource_the_caller_may_not_see_cannot_be_subscribed_to(tmp_path: Path) -> None:
    async with lab(tmp_path) as gw, Client(f"{gw.url}/mcp", mode="legacy") as client:
        for uri in ("mcp-gateway://lab/nobody/note://a", "note://a", "mcp-gateway://other/notes/x"):
            try:
                await client.session.subscribe_resource(uri)
            except Exception as exc:
                assert "Resource not found" in str(exc)
            else:
                raise AssertionError(f"subscribed to {uri}")

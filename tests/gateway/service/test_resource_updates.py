"""Resource subscriptions through the gateway (2025-11-25 sessions): a backend's `notifications/resources/updated`
(sent on its own GET stream, outside any request) reaches the session that subscribed, under the URI that session
knows, and no other session; an update for a resource nobody subscribed to reaches nobody; unsubscribing stops
them. On /mcp and on the server's own endpoint. Real fastmcp backend and clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types
from fastmcp import Client, Context, FastMCP
from mcp.server.context import ServerRequestContext

from tests.gateway.test_timing import ACCEPT, MODERN
from tests.support import LegacyOnly, Served, gateway, serve, write_config


class Probe:
    """What the backend saw: an event set at each unsubscribe."""

    def __init__(self) -> None:
        self.unsubscribed = anyio.Event()


def watched_backend(probe: Probe) -> FastMCP:
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
        probe.unsubscribed.set()
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
async def lab(tmp_path: Path, probe: Probe | None = None) -> AsyncIterator[Served]:
    app = watched_backend(probe or Probe()).http_app(path="/mcp")
    async with serve(LegacyOnly(app)) as backend:  # type: ignore[arg-type]
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


async def test_a_2026_listen_stream_gets_the_updates_of_the_resources_it_names(tmp_path: Path) -> None:
    """A 2026-07-28 caller subscribes by naming resources in `subscriptions/listen`: the acknowledgement honours
    those its backend accepted (a resource it may not see is left out), the updates arrive on the stream under its
    subscription id, and closing the stream unsubscribes at the backend."""
    envelope = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}

    def headers(method: str, name: str | None = None) -> dict[str, str]:
        out = {"accept": ACCEPT, "content-type": "application/json", "mcp-protocol-version": MODERN}
        out["mcp-method"] = method
        if name:
            out["mcp-name"] = name
        return out

    probe = Probe()
    async with lab(tmp_path, probe) as gw, httpx2.AsyncClient(timeout=10) as http:
        url = f"{gw.url}/mcp"
        mine = "mcp-gateway://lab/notes/note://a"
        wanted = [mine, "mcp-gateway://lab/nobody/note://b"]  # the second names no server the caller may use
        listen = {
            "jsonrpc": "2.0",
            "id": "watch-1",
            "method": "subscriptions/listen",
            "params": {"notifications": {"resourceSubscriptions": wanted}, "_meta": envelope},
        }

        async def touch(uri: str) -> Any:
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "lab__notes__touch", "arguments": {"uri": uri}, "_meta": envelope},
            }
            answer = await http.post(url, content=json.dumps(call), headers=headers("tools/call", "lab__notes__touch"))
            return json.loads(answer.text)["result"]["structuredContent"]["result"]

        async with http.stream("POST", url, content=json.dumps(listen), headers=headers("subscriptions/listen")) as s:
            frames = s.aiter_lines()

            async def next_message() -> dict[str, Any]:
                with anyio.fail_after(10):
                    async for line in frames:
                        if line.startswith("data: "):
                            return dict(json.loads(line[6:]))
                raise AssertionError("the stream ended")

            ack = await next_message()
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            assert ack["params"]["notifications"] == {"resourceSubscriptions": [mine]}
            assert await touch("note://a") == ["note://a"]  # subscribed at the backend
            update = await next_message()
            assert update["method"] == "notifications/resources/updated"
            assert update["params"]["uri"] == mine
            assert update["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "watch-1"
        # The stream closed: the backend is told to unsubscribe.
        with anyio.fail_after(10):
            await probe.unsubscribed.wait()
        assert await touch("note://b") == []


def broadcasting_backend() -> FastMCP:
    """A backend of both eras whose 2026-07-28 side has no `subscriptions/listen` (fastmcp's): a client subscribes
    on a 2025-11-25 session, and `touch` tells every session subscribed to the resource, from whatever request."""
    mcp = FastMCP("broadcasting")
    subscribers: dict[str, list[Any]] = {}

    @mcp.resource("note://a", mime_type="text/plain")
    def a() -> str:
        return "a"

    @mcp.tool
    async def touch(uri: str) -> int:
        for session in subscribers.get(uri, []):
            await session.send_resource_updated(uri)
        return len(subscribers.get(uri, []))

    async def subscribe(ctx: ServerRequestContext[Any], params: mcp_types.SubscribeRequestParams) -> Any:
        subscribers.setdefault(str(params.uri), []).append(ctx.session)
        return mcp_types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: mcp_types.UnsubscribeRequestParams) -> Any:
        subscribers.pop(str(params.uri), None)  # (its one subscriber, in this test)
        return mcp_types.EmptyResult()

    mcp._mcp_server.add_request_handler("resources/subscribe", mcp_types.SubscribeRequestParams, subscribe)
    mcp._mcp_server.add_request_handler("resources/unsubscribe", mcp_types.UnsubscribeRequestParams, unsubscribe)
    return mcp


async def test_a_backend_without_subscriptions_listen_is_subscribed_to_on_a_handshake_session(tmp_path: Path) -> None:
    """The gateway speaks 2026-07-28 to this backend, which has no `subscriptions/listen`: the subscription is made on
    a 2025-11-25 session to it (it speaks both), and its updates reach the subscriber; unsubscribing ends it."""
    async with serve(broadcasting_backend().http_app(path="/mcp")) as backend:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {"notes": backend.url})
        async with gateway(config) as gw:
            inbox = Inbox()
            async with Client(f"{gw.url}/mcp-server/lab/notes/server", mode="legacy", message_handler=inbox) as c:
                await c.session.subscribe_resource("note://a")
                assert (await c.call_tool("touch", {"uri": "note://a"})).data == 1
                assert await inbox.next() == "note://a"
                await c.session.unsubscribe_resource("note://a")
                with anyio.fail_after(10):
                    while (await c.call_tool("touch", {"uri": "note://a"})).data != 0:
                        await anyio.wait_all_tasks_blocked()  # the backend is told in the background

"""End to end: real backends of both eras, the gateway, and real clients (fastmcp and the official mcp client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp
import pytest
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from tests.backends import build_lab
from tests.support import LegacyOnly, Served, gateway, serve, write_config

ERAS = ["legacy", "2026-07-28"]
VIRTUAL = """\
  - name: readonly
    type: integration/mcp-server/virtual
    description: Only echo and add.
    authorized_subjects: [team:platform-engineering]
    servers:
      - server: lab/modern
        tools: [echo, add]
      - server: lab/legacy
        tools: [echo]
  - name: others-only
    type: integration/mcp-server/remote
    url: {url}/mcp
    authorized_subjects: [team:support]
"""


@asynccontextmanager
async def northwind(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Served, Served, Served]]:
    async with (
        serve(build_lab().http_app(path="/mcp")) as modern,
        serve(LegacyOnly(build_lab(name="old").http_app(path="/mcp"))) as legacy,
    ):
        config = write_config(
            tmp_path / "servers.d", {"modern": modern.url, "legacy": legacy.url}, VIRTUAL.format(url=modern.url)
        )
        async with gateway(config, **settings) as gw:
            yield gw, modern, legacy


@pytest.mark.parametrize("era", ERAS)
async def test_aggregate_endpoint_with_official_client(tmp_path: Path, era: str) -> None:
    async with northwind(tmp_path) as (gw, _, _), mcp.Client(f"{gw.url}/mcp", mode=era) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "lab__modern__echo" in tools and "lab__legacy__point" in tools
        assert (tools["lab__legacy__add"].meta or {})["virtual-mcp/source"] == {"server": "lab/legacy", "tool": "add"}
        # Names are namespaced per backend, the caller only sees servers it is authorized for.
        assert not any(name.startswith("lab__others-only__") for name in tools)
        assert {n.split("__")[1] for n in tools} == {"modern", "legacy", "readonly"}
        result = await client.call_tool("lab__legacy__add", {"a": 2, "b": 3})
        assert result.structured_content == {"result": 5}
        assert not result.is_error


@pytest.mark.parametrize("era", ERAS)
async def test_single_server_endpoint_keeps_original_names(tmp_path: Path, era: str) -> None:
    async with northwind(tmp_path) as (gw, _, _), Client(f"{gw.url}/mcp-server/lab/legacy/server", mode=era) as c:
        names = {t.name for t in await c.list_tools()}
        assert {"echo", "add", "slow", "headers"} <= names
        assert (await c.call_tool("echo", {"text": "direct name"})).data == "direct name"


@pytest.mark.parametrize("era", ERAS)
async def test_virtual_server_serves_only_its_curated_tools(tmp_path: Path, era: str) -> None:
    async with northwind(tmp_path) as (gw, _, _), Client(f"{gw.url}/mcp-server/lab/readonly/server", mode=era) as c:
        tools = {t.name: t for t in await c.list_tools()}
        assert set(tools) == {"modern__echo", "modern__add", "legacy__echo"}
        assert (tools["legacy__echo"].meta or {})["virtual-mcp/source"] == {"server": "lab/legacy", "tool": "echo"}
        assert (await c.call_tool("legacy__echo", {"text": "v"})).data == "v"
        # A tool of the source server outside the curated subset is answered exactly like one that does not exist.
        with pytest.raises(MCPError) as hidden:
            await c.call_tool("modern__slow", {})
        with pytest.raises(MCPError) as missing:
            await c.call_tool("modern__no_such_tool", {})
        assert str(hidden.value).replace("modern__slow", "X") == str(missing.value).replace("modern__no_such_tool", "X")


@pytest.mark.parametrize("era", ERAS)
async def test_unauthorized_server_is_forbidden_alone_and_invisible_in_aggregate(tmp_path: Path, era: str) -> None:
    async with northwind(tmp_path) as (gw, _, _):
        # The server's own endpoint: authenticated but not authorized is 403, before any MCP exchange.
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{gw.url}/mcp-server/lab/others-only/server",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"accept": "application/json, text/event-stream"},
            )
        assert response.status_code == 403
        assert response.json()["error"]["message"] == "Forbidden: you are not authorized for lab/others-only"
        # The aggregate endpoint never refuses; it shows nothing of the server and answers calls as unknown tools.
        async with mcp.Client(f"{gw.url}/mcp", mode=era) as client:
            assert not any("others-only" in t.name for t in (await client.list_tools()).tools)
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("lab__others-only__echo", {"text": "x"})


async def test_backend_tool_list_change_reaches_gateway_clients(tmp_path: Path) -> None:
    lab = build_lab()
    async with serve(LegacyOnly(lab.http_app(path="/mcp"))) as backend:
        config = write_config(tmp_path / "servers.d", {"lab": backend.url})
        async with gateway(config) as gw:
            changed = anyio.Event()

            async def on_message(message: Any) -> None:
                if getattr(message, "method", None) == "notifications/tools/list_changed":
                    changed.set()

            async with Client(f"{gw.url}/mcp", mode="legacy", message_handler=on_message) as client:
                assert "lab__lab__late" not in {t.name for t in await client.list_tools()}
                # The backend grows a tool and announces it on its own session with the gateway.
                assert (await client.call_tool("lab__lab__grow", {"name": "late"})).data == "added late"
                with anyio.fail_after(10):
                    await changed.wait()
                assert "lab__lab__late" in {t.name for t in await client.list_tools()}
                assert (await client.call_tool("lab__lab__late", {})).data == "late works"


async def test_tool_list_change_reaches_modern_clients_on_listen_stream(tmp_path: Path) -> None:
    async with serve(LegacyOnly(build_lab().http_app(path="/mcp"))) as backend:
        config = write_config(tmp_path / "servers.d", {"lab": backend.url})
        async with gateway(config) as gw, mcp.Client(f"{gw.url}/mcp", mode="2026-07-28") as client:
            assert "lab__lab__later" not in {t.name for t in (await client.list_tools()).tools}
            async with client.listen(tools_list_changed=True) as subscription:
                await client.call_tool("lab__lab__grow", {"name": "later"})
                with anyio.fail_after(10):
                    async for _event in subscription:
                        break
            assert "lab__lab__later" in {t.name for t in (await client.list_tools()).tools}


class DeleteRecorder:
    """Passes requests to a backend app and records the session ids it is asked to DELETE."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.deleted: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "DELETE":
            self.deleted.append(dict(scope["headers"]).get(b"mcp-session-id", b"").decode())
        await self.app(scope, receive, send)


async def test_gateway_ends_backend_sessions_on_shutdown(tmp_path: Path) -> None:
    recorder = DeleteRecorder(LegacyOnly(build_lab().http_app(path="/mcp")))
    async with serve(recorder) as backend:
        config = write_config(tmp_path / "servers.d", {"lab": backend.url})
        async with gateway(config) as gw, Client(f"{gw.url}/mcp", mode="legacy") as client:
            assert (await client.call_tool("lab__lab__echo", {"text": "x"})).data == "x"
            assert recorder.deleted == []
        # The gateway has shut down: its backend sessions were ended politely, the server's own (which lists the
        # tools) and alice's (which served her call).
        assert len(set(recorder.deleted)) == 2 and all(recorder.deleted)

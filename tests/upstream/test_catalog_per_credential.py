"""A backend called with each caller's own credential may show each caller different tools: its list is cached for
that credential only, never served to another caller (here checked passthrough of the caller's IdP JWT; per-user
OAuth uses the same mechanism, keyed by the user's connection)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt, secure_gateway
from tests.support import serve

AUDIENCE = "https://files.northwind.example/mcp"


def group_doc(url: str) -> str:
    return group("lab", remote("files", url, auth_data={"type": "passthrough", "audience": AUDIENCE}))


SCHEMA = {"type": "object", "properties": {}}


def subject_of(ctx: ServerRequestContext[Any, Any]) -> str:
    """The `sub` of the bearer JWT the gateway passed through (the backend would verify it; the test trusts it)."""
    request = ctx.request
    bearer = request.headers.get("authorization", "") if request is not None else ""
    payload = bearer.removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"]).split("@")[0]


def files_backend() -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        own = types.Tool(name=f"files_of_{subject_of(ctx)}", input_schema=SCHEMA)
        return types.ListToolsResult(tools=[types.Tool(name="common", input_schema=SCHEMA), own])

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        text = f"{params.name} called by {subject_of(ctx)}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("files", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[SecureGateway]:
    async with serve(files_backend().streamable_http_app()) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config, {PLATFORM: []})
        async with secure_gateway(config, tmp_path / "data") as gw:
            yield gw


def text(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def client(gw: SecureGateway, path: str, user: str, mode: str) -> Client[Any]:
    token = idp_jwt(f"{user}@northwind.example", [GATEWAY_AUDIENCE, AUDIENCE], time.time(), groups=["platform"])
    return Client(StreamableHttpTransport(f"{gw.url}{path}", auth=token), mode=mode)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_each_caller_is_shown_the_list_their_own_credential_fetched(tmp_path: Path, mode: str) -> None:
    async with lab(tmp_path) as gw:
        for path, prefix in (("/mcp-server/lab/files/server", ""), ("/mcp", "lab__files__")):
            for user in ("alice", "bob", "alice"):
                async with client(gw, path, user, mode) as c:
                    names = {t.name for t in await c.list_tools()}
                assert names == {f"{prefix}common", f"{prefix}files_of_{user}"}


async def test_a_tool_only_another_callers_list_has_is_unknown_to_this_caller(tmp_path: Path) -> None:
    async with lab(tmp_path) as gw:
        path = "/mcp-server/lab/files/server"
        async with client(gw, path, "alice", "legacy") as alice:
            assert text(await alice.call_tool("files_of_alice", {})) == "files_of_alice called by alice"
        async with client(gw, path, "bob", "legacy") as bob:
            with pytest.raises(MCPError) as unknown:
                await bob.call_tool("files_of_alice", {})
            assert (unknown.value.code, unknown.value.message) == (-32602, "Unknown tool: 'files_of_alice'")
            assert text(await bob.call_tool("common", {})) == "common called by bob"

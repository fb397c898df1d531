"""A stdio MCP server as users install it from PyPI (`mcp-server-time`, pinned in the dev dependencies), configured
with `transport: stdio`: through the gateway it answers as it does directly, in both client eras, on its own
endpoint and on /mcp."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from tests.lab_config import group, remote, write_identities
from tests.support import LOCAL_USER, gateway

TEAM = "platform-engineering"
COMMAND = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("convert_time", {"source_timezone": "Europe/Paris", "time": "16:30", "target_timezone": "Asia/Tokyo"}),
    ("convert_time", {"source_timezone": "Nowhere/Atlantis", "time": "16:30", "target_timezone": "UTC"}),
]


async def surface(client: Client[Any], prefix: str = "") -> dict[str, Any]:
    tools = sorted((t.model_dump(exclude_none=True) for t in await client.list_tools()), key=lambda t: t["name"])
    calls = []
    for name, arguments in CALLS:
        result = await client.call_tool_mcp(prefix + name, arguments)
        calls.append(result.model_dump(exclude_none=True, exclude={"meta"}))
    now = await client.call_tool_mcp(prefix + "get_current_time", {"timezone": "UTC"})
    return {
        "tools": tools,
        "calls": calls,
        "now_is_error": now.is_error,
        "now_keys": sorted(now.structured_content or {}),
    }


async def test_a_pypi_stdio_server_answers_through_the_gateway_as_directly(tmp_path: Path) -> None:
    async with Client(StdioTransport(COMMAND[0], COMMAND[1:], env={"PATH": "/usr/bin:/bin"})) as direct:
        expected = await surface(direct)
    assert {t["name"] for t in expected["tools"]} == {"get_current_time", "convert_time"}
    assert expected["calls"][1]["is_error"] is True  # its own error for a bad zone, passed on as it is
    server = remote("time", "unused", [f"team:{TEAM}"])
    del server["url"]
    server.update(transport="stdio", command=COMMAND[0], args=COMMAND[1:])
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "lab.yaml").write_text(group("lab", server))
    write_identities(config, {TEAM: [LOCAL_USER]})
    async with gateway(config, list_deadline_seconds=30) as gw:
        for mode in ("legacy", "2026-07-28"):
            async with Client(f"{gw.url}/mcp-server/lab/time/server", mode=mode) as through:
                assert await surface(through) == expected
            async with Client(f"{gw.url}/mcp", mode=mode) as aggregate:
                got = await surface(aggregate, "lab__time__")
                # Namespaced, and saying where each comes from.
                source = "virtual-mcp/source"
                named = [
                    {
                        **t,
                        "name": f"lab__time__{t['name']}",
                        "meta": {source: {"server": "lab/time", "tool": t["name"]}},
                    }
                    for t in expected["tools"]
                ]
                assert got == {**expected, "tools": named}

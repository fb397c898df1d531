from __future__ import annotations

from pathlib import Path

from fastmcp import Client

from tests.backends import build_lab
from tests.support import LegacyOnly, gateway, serve, write_config


async def test_tools_through_gateway_both_eras(tmp_path: Path) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as modern,
        serve(LegacyOnly(build_lab(name="old").http_app(path="/mcp"))) as legacy,
    ):
        config = write_config(tmp_path / "servers.d", {"modern": modern.url, "legacy": legacy.url})
        async with gateway(config) as gw:
            for mode in ("legacy", "2026-07-28"):
                async with Client(f"{gw.url}/mcp", mode=mode) as client:
                    names = {t.name for t in await client.list_tools()}
                    assert "lab__modern__echo" in names and "lab__legacy__echo" in names
                    for prefix in ("lab__modern__", "lab__legacy__"):
                        result = await client.call_tool(prefix + "echo", {"text": "hi"})
                        assert result.data == "hi"

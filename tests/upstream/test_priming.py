"""A backend that primes its event streams (an event with an id and empty data first, so clients can resume: the
SDK's server does it when it has an event store, as does the reference server-everything) works through the gateway
in both client eras."""

from __future__ import annotations

from pathlib import Path

from fastmcp import Client
from fastmcp.server.event_store import EventStore

from tests.backends import build_lab
from tests.support import LegacyOnly, gateway, serve, write_config


async def test_calls_and_lists_through_a_priming_backend(tmp_path: Path) -> None:
    def primed() -> object:
        return build_lab().http_app(path="/mcp", event_store=EventStore(), retry_interval=2000)

    # A 2025-11-25 backend answers every request with an event stream, primed; a 2026-07-28 one primes its streams.
    async with serve(LegacyOnly(primed())) as legacy, serve(primed()) as modern:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {"legacy": legacy.url, "modern": modern.url})
        async with gateway(config) as gw:
            for server in ("legacy", "modern"):
                for mode in ("legacy", "2026-07-28"):
                    async with Client(f"{gw.url}/mcp-server/lab/{server}/server", mode=mode) as client:
                        assert "echo" in {t.name for t in await client.list_tools()}
                        assert (await client.call_tool("echo", {"text": f"hi {mode}"})).data == f"hi {mode}"

"""`completion/complete` on a remote server's endpoint: forwarded to the backend (tests/interop/test_everything.py
compares the reference server's completions direct and through the gateway); a backend that answers -32601 gets its
caller an empty completion (no suggestions), not an error."""

from __future__ import annotations

from pathlib import Path

import mcp_types
from fastmcp import Client

from tests.backends import build_lab
from tests.support import gateway, serve, write_config


async def test_a_backend_without_completions_gives_no_suggestions(tmp_path: Path) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        gateway(write_config(tmp_path / "servers.d", {"plain": backend.url})) as gw,
    ):
        for mode in ("legacy", "2026-07-28"):
            async with Client(f"{gw.url}/mcp-server/lab/plain/server", mode=mode) as client:
                prompt = mcp_types.PromptReference(type="ref/prompt", name="review")
                completion = await client.complete(prompt, {"name": "style", "value": "t"})
                assert completion.values == [] and not completion.has_more

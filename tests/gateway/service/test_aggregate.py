"""`/mcp` lists and serves the prompts, resources and resource templates of every remote server the caller may use,
named to find their way back (service/aggregate.py); nothing of a server the caller may not use."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import pytest
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from tests.backends import build_lab
from tests.lab_config import group, remote, write_identities
from tests.support import LOCAL_USER, gateway, serve
from virtual_mcp.gateway.service.aggregate import parse_uri, wrap_uri
from virtual_mcp.types import ServerRef

TEAM = "platform-engineering"


def config(directory: Path, url: str) -> Path:
    servers = [
        remote("plain", url, [f"team:{TEAM}"]),
        remote("aliased", url, [f"team:{TEAM}"], tool_prefix="al"),
        remote("hidden", url, ["team:nobody"]),
    ]
    directory.mkdir(parents=True)
    (directory / "lab.yaml").write_text(group("lab", *servers))
    write_identities(directory, {TEAM: [LOCAL_USER]})
    return directory


async def test_prompts_resources_and_templates_of_the_callers_servers(tmp_path: Path) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        gateway(config(tmp_path / "servers.d", backend.url)) as gw,
    ):
        for mode in ("legacy", "2026-07-28"):
            async with Client(f"{gw.url}/mcp", mode=mode) as client:
                prompts = {p.name for p in await client.list_prompts()}
                assert prompts == {"lab__plain__review", "al__review"}
                got = await client.get_prompt("al__review", {"code": "x = 1", "style": "kind"})
                assert "Review this (kind): x = 1" in str(got.messages[0].content)
                resources = {str(r.uri) for r in await client.list_resources()}
                assert resources == {"mcp-gateway://lab/plain/lab://readme", "mcp-gateway://lab/aliased/lab://readme"}
                [content] = await client.read_resource("mcp-gateway://lab/plain/lab://readme")
                assert str(content.uri) == "mcp-gateway://lab/plain/lab://readme" and "# Lab" in content.text
                templates = {t.uri_template for t in await client.list_resource_templates()}
                assert "mcp-gateway://lab/plain/lab://notes/{note_id}" in templates
                assert not any("/hidden/" in t for t in templates)
                # A URI made from a template reads through to its server.
                [note] = await client.read_resource("mcp-gateway://lab/plain/lab://notes/7")
                assert "7" in note.text
                # A server the caller may not use: its prompts and resources do not exist for them (the answer is
                # the one for a server that does not exist at all).
                hidden = await refusal(client.get_prompt("lab__hidden__review", {"code": "x"}))
                assert hidden == "Unknown prompt: lab__hidden__review"
                assert await refusal(client.get_prompt("lab__ghost__review", {"code": "x"})) == hidden.replace(
                    "hidden", "ghost"
                )
                hidden = await refusal(client.read_resource("mcp-gateway://lab/hidden/lab://readme"))
                assert hidden == "Resource not found: mcp-gateway://lab/hidden/lab://readme"
                ghost = await refusal(client.read_resource("mcp-gateway://lab/ghost/lab://readme"))
                assert ghost == hidden.replace("hidden", "ghost")
                assert await refusal(client.read_resource("lab://readme")) == "Resource not found: lab://readme"


async def refusal(attempt: Awaitable[object]) -> str:
    with pytest.raises(MCPError) as refused:
        await attempt
    return str(refused.value.error.message if hasattr(refused.value, "error") else refused.value)


def test_a_wrapped_uri_round_trips() -> None:
    ref = ServerRef("g", "s")
    for original in ("file:///etc/x", "lab://notes/{id}", "https://h.example/a/b?c=d#e", "x"):
        assert parse_uri(wrap_uri(ref, original)) == (ref, original)
    for foreign in ("file:///x", "mcp-gateway://g", "mcp-gateway://g/s", "mcp-gateway://g/s/", "mcp-gateway:///s/x"):
        assert parse_uri(foreign) is None

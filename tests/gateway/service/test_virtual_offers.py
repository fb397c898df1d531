"""A virtual server offers the prompts, resources and templates of its sources that it names (`prompts`,
`resources`: shell-style patterns), under names and URIs that find their way back, gated by its own
`authorized_subjects`; what it does not name does not exist through it. Real fastmcp backend and clients, both eras."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastmcp import Client, FastMCP
from mcp.shared.exceptions import MCPError

from tests.support import gateway, serve, write_config
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.errors import ConfigError

CURATED = "/mcp-server/lab/curated/server"


def documented_backend() -> FastMCP:
    mcp = FastMCP("documented")

    @mcp.tool
    def echo(text: str) -> str:
        return text

    @mcp.prompt
    def summarize(topic: str) -> str:
        return f"Summarize {topic}."

    @mcp.prompt
    def drop_tables() -> str:
        return "DROP everything."

    @mcp.resource("doc://public/readme", mime_type="text/plain")
    def readme() -> str:
        return "read me"

    @mcp.resource("doc://private/salaries", mime_type="text/plain")
    def salaries() -> str:
        return "secret numbers"

    @mcp.resource("doc://public/page/{n}", mime_type="text/plain")
    def page(n: str) -> str:
        return f"page {n}"

    @mcp.resource("doc://private/row/{n}", mime_type="text/plain")
    def row(n: str) -> str:
        return f"row {n}"

    return mcp


VIRTUALS = """  - name: curated
    type: integration/mcp-server/virtual
    authorized_subjects: [team:platform-engineering]
    servers:
      - server: lab/docs
        tools: [echo]
        prompts: [summarize]
        resources: ["doc://public/*"]
  - name: tools-only
    type: integration/mcp-server/virtual
    authorized_subjects: [team:platform-engineering]
    servers:
      - server: lab/docs
        tools: [echo]
  - name: nobodys
    type: integration/mcp-server/virtual
    authorized_subjects: [team:nobody]
    servers:
      - server: lab/docs
        prompts: ["*"]
        resources: ["*"]
"""


def wrapped(uri: str) -> str:
    return f"mcp-gateway://lab/docs/{uri}"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_virtual_server_offers_the_prompts_and_resources_it_names_and_nothing_else(
    tmp_path: Path, mode: str
) -> None:
    async with serve(documented_backend().http_app(path="/mcp")) as backend:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {"docs": backend.url}, VIRTUALS)
        async with gateway(config) as gw, Client(f"{gw.url}{CURATED}", mode=mode) as client:
            assert [p.name for p in await client.list_prompts()] == ["docs__summarize"]
            got = await client.get_prompt("docs__summarize", {"topic": "gateways"})
            assert "Summarize gateways." in str(got.messages[0].content)
            assert [str(r.uri) for r in await client.list_resources()] == [wrapped("doc://public/readme")]
            templates = [t.uri_template for t in await client.list_resource_templates()]
            assert templates == [wrapped("doc://public/page/{n}")]
            read = await client.read_resource(wrapped("doc://public/page/7"))
            assert getattr(read[0], "text", None) == "page 7"
            # What it does not name does not exist through it, whatever the caller knows of the backend.
            for name in ("docs__drop_tables", "drop_tables", "summarize"):
                with pytest.raises(MCPError) as unknown:
                    await client.get_prompt(name)
                assert f"Unknown prompt: {name}" in str(unknown.value)
            for uri in (wrapped("doc://private/salaries"), wrapped("doc://private/row/1"), "doc://public/readme"):
                with pytest.raises(MCPError) as missing:
                    await client.read_resource(uri)
                assert "Resource not found" in str(missing.value) and "secret" not in str(missing.value)
        async with gateway(config) as gw:
            # A virtual server that names no prompt or resource offers none (nor says it does).
            async with Client(f"{gw.url}/mcp-server/lab/tools-only/server", mode=mode) as tools_only:
                result = tools_only.initialize_result
                assert result is None or result.capabilities.prompts is None
                with pytest.raises(MCPError):
                    await tools_only.list_prompts()
            # Its gate is its own: a caller it does not authorize reaches nothing of it (refused at the door).
            with pytest.raises(MCPError) as refused:
                async with Client(f"{gw.url}/mcp-server/lab/nobodys/server", mode=mode) as nobody:
                    await nobody.list_prompts()
            assert "not authorized for lab/nobodys" in str(refused.value)


def test_check_refuses_an_empty_pattern(tmp_path: Path) -> None:
    extra = VIRTUALS.replace("prompts: [summarize]", 'prompts: [""]')
    config = write_config(tmp_path / "servers.d", {"docs": "http://127.0.0.1:9"}, extra)
    with pytest.raises(ConfigError) as refused:
        load_config_dir(config)
    assert "prompts" in str(refused.value)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_on_mcp_a_caller_of_the_virtual_server_only_finds_what_it_offers(tmp_path: Path, mode: str) -> None:
    """The caller may use the virtual server but not the remote server behind it: on /mcp, they find the virtual
    server's tools, prompts and resources, and nothing else of that server."""
    async with serve(documented_backend().http_app(path="/mcp")) as backend:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {}, VIRTUALS)
        group = (config / "lab.yaml").read_text()
        remote = (
            "  - name: docs\n    type: integration/mcp-server/remote\n"
            f"    url: {backend.url}/mcp\n    authorized_subjects: [team:nobody]\n"
        )
        (config / "lab.yaml").write_text(group.replace("integrations:\n", "integrations:\n" + remote, 1))
        async with gateway(config) as gw, Client(f"{gw.url}/mcp", mode=mode) as client:
            assert [t.name for t in await client.list_tools()] == [
                "lab__curated__docs__echo",
                "lab__tools-only__docs__echo",
            ]
            assert [p.name for p in await client.list_prompts()] == ["lab__curated__docs__summarize"]
            got = await client.get_prompt("lab__curated__docs__summarize", {"topic": "names"})
            assert "Summarize names." in str(got.messages[0].content)
            assert [str(r.uri) for r in await client.list_resources()] == [wrapped("doc://public/readme")]
            read = await client.read_resource(wrapped("doc://public/readme"))
            assert getattr(read[0], "text", None) == "read me"
            for uri in (wrapped("doc://private/salaries"), wrapped("doc://private/row/2")):
                with pytest.raises(MCPError) as missing:
                    await client.read_resource(uri)
                assert "Resource not found" in str(missing.value)
            with pytest.raises(MCPError):
                await client.get_prompt("lab__docs__drop_tables")

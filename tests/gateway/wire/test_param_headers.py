"""Tools whose schema mirrors arguments into Mcp-Param-* headers (2026-07-28): forwarded with their headers, and a
forbidden one is indistinguishable from one that does not exist, even before dispatch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
from fastmcp import FastMCP
from pydantic import Field

from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import secure_gateway
from tests.support import serve
from virtual_mcp.types import PrincipalKind

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


def group_doc(url: str) -> str:
    return group("lab", remote("ops", url))


def ops_backend() -> FastMCP:
    mcp: FastMCP = FastMCP("ops")

    @mcp.tool
    def deploy(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        """Deploy to a region."""
        return f"deployed to {region}"

    return mcp


def call(name: str, arguments: dict[str, str], headers: dict[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": ENVELOPE},
    }
    routing = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": name}
    return body, {"accept": "application/json, text/event-stream", **routing, **headers}


async def test_param_headers_are_mirrored_and_do_not_reveal_forbidden_tools(tmp_path: Path) -> None:
    async with serve(ops_backend().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config, {PLATFORM: ["alice@x.example"]})
        async with secure_gateway(config, tmp_path / "data") as gw, httpx.AsyncClient() as http:
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            mallory = await gw.token(PrincipalKind.USER, "mallory@x.example")
            # Warm the catalog as alice, so the tool's schema is known to the gateway.
            async with gw.client("/mcp", alice, mode=MODERN) as client:
                result = await client.call_tool("lab__ops__deploy", {"region": "eu-west"})
                assert result.data == "deployed to eu-west"
            # A raw call with a matching Mcp-Param header works; the gateway mirrors the header upstream itself.
            body, headers = call("lab__ops__deploy", {"region": "eu"}, {"mcp-param-region": "eu"})
            ok = await http.post(f"{gw.url}/mcp", json=body, headers={**headers, "authorization": f"Bearer {alice}"})
            assert ok.status_code == 200 and "deployed to eu" in ok.text
            # For someone who may not use it, the missing header is not even checked: "unknown tool", as for a
            # tool that does not exist.
            answers = []
            for name in ("lab__ops__deploy", "lab__ops__nosuch"):
                body, headers = call(name, {"region": "eu"}, {})
                response = await http.post(
                    f"{gw.url}/mcp", json=body, headers={**headers, "authorization": f"Bearer {mallory}"}
                )
                error = response.json()["error"]
                answers.append((response.status_code, error["code"], error["message"].replace(name, "X")))
            assert answers[0] == answers[1] and answers[0][1] == -32602

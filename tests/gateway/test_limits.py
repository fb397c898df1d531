"""One caller cannot degrade the gateway for everyone: per-principal session quotas and request rates.

A real gateway with the production security planes (tests/security_support.py), real clients (fastmcp's, and raw
HTTP for the refused requests), two principals: the one over its limit is refused with a precise 429, the other is
served as if nothing happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.backends import build_lab
from tests.lab_config import write_identities
from tests.security_support import SecureGateway, secure_gateway
from tests.support import serve, write_config
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import ConfigError
from virtual_mcp.registry import build_registry
from virtual_mcp.types import PrincipalKind

PATH = "/mcp-server/lab/echo/server"
LEGACY = "2025-11-25"
TEAMS = {"platform-engineering": ["alice@x.example", "mallory@x.example"]}


def initialize(bearer: str) -> dict[str, Any]:
    return {
        "json": {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        },
        "headers": {"Authorization": f"Bearer {bearer}", "Accept": "application/json, text/event-stream"},
    }


async def lab(tmp_path: Path, **limits: Any) -> Any:
    return secure_gateway(tmp_path / "servers.d", tmp_path / "data", limits=Limits(**limits))


async def call_echo(gw: SecureGateway, bearer: str) -> str:
    async with Client(StreamableHttpTransport(f"{gw.url}{PATH}", auth=bearer), mode="legacy") as client:
        return str((await client.call_tool("echo", {"text": "still served"})).data)


async def test_one_principal_cannot_take_every_session(tmp_path: Path) -> None:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        write_config(tmp_path / "servers.d", {"echo": backend.url})
        write_identities(tmp_path / "servers.d", TEAMS)
        async with await lab(tmp_path, sessions_per_principal=3) as gw, httpx.AsyncClient() as http:
            mallory = await gw.token(PrincipalKind.USER, "mallory@x.example")
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            opened = []
            for _ in range(3):
                answer = await http.post(f"{gw.url}{PATH}", **initialize(mallory))
                assert answer.status_code == 200, answer.text
                opened.append(answer.headers["mcp-session-id"])
            refused = await http.post(f"{gw.url}{PATH}", **initialize(mallory))
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "60"
            error = refused.json()["error"]
            assert error["code"] == -32029
            assert error["message"].startswith("Too many open sessions: you hold 3 of at most 3;")
            # The same quota on every endpoint: sessions are counted per principal, not per URL.
            assert (await http.post(f"{gw.url}/mcp", **initialize(mallory))).status_code == 429
            # Everyone else is served as before.
            assert await call_echo(gw, alice) == "still served"
            # Ending one of hers gives her a place back.
            headers = {**initialize(mallory)["headers"], "mcp-session-id": opened[0], "mcp-protocol-version": LEGACY}
            assert (await http.delete(f"{gw.url}{PATH}", headers=headers)).status_code == 200
            assert (await http.post(f"{gw.url}{PATH}", **initialize(mallory))).status_code == 200


async def test_the_gateways_total_is_a_backstop(tmp_path: Path) -> None:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        write_config(tmp_path / "servers.d", {"echo": backend.url})
        write_identities(tmp_path / "servers.d", TEAMS)
        async with await lab(tmp_path, max_sessions=2) as gw, httpx.AsyncClient() as http:
            mallory = await gw.token(PrincipalKind.USER, "mallory@x.example")
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            for _ in range(2):
                assert (await http.post(f"{gw.url}{PATH}", **initialize(mallory))).status_code == 200
            full = await http.post(f"{gw.url}/mcp", **initialize(alice))
            assert full.status_code == 503
            assert full.json()["error"] == {
                "code": -32030,
                "message": "The gateway holds its maximum of 2 open sessions; retry later",
            }


async def test_one_principal_over_its_request_rate_is_slowed_alone(tmp_path: Path) -> None:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        write_config(tmp_path / "servers.d", {"echo": backend.url})
        write_identities(tmp_path / "servers.d", TEAMS)
        # A rate so low that nothing refills during the test: the bucket's burst is all mallory gets.
        async with (
            await lab(tmp_path, requests_per_second_per_principal=0.001, request_burst_per_principal=8) as gw,
            httpx.AsyncClient() as http,
        ):
            mallory = await gw.token(PrincipalKind.USER, "mallory@x.example")
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            statuses = [(await http.post(f"{gw.url}{PATH}", **initialize(mallory))).status_code for _ in range(8)]
            assert statuses == [200] * 8
            for method, path in (  # every kind of route that needs a caller
                ("POST", PATH),
                ("POST", "/mcp"),
                ("POST", "/mcp-server/lab/nope/server"),  # unconfigured
                ("POST", "/mcp-server/lab"),
                ("GET", "/admin/groups/lab"),
                ("GET", "/oauth/connections"),
                ("DELETE", "/oauth/connections/lab/echo"),
            ):
                refused = await http.request(method, f"{gw.url}{path}", **initialize(mallory))
                assert refused.status_code == 429, path
                assert int(refused.headers["retry-after"]) >= 1
                error = refused.json()["error"]
                assert error["code"] == -32029
                assert error["message"].startswith("Too many requests: at most 0.001 per second (bursts of 8)")
            # alice has a bucket of her own (an echo through a session: initialize, initialized, call).
            assert await call_echo(gw, alice) == "still served"


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ("{sessions_per_principal: 0}", "sessions_per_principal"),
        ("{requests_per_second_per_principal: -1}", "requests_per_second_per_principal"),
        ("{no_such_limit: 1}", "no_such_limit"),
        ("{request_burst_per_principal: many}", "request_burst_per_principal"),
    ],
)
def test_limits_in_the_gateway_document_are_checked(tmp_path: Path, limits: str, problem: str) -> None:
    config = write_config(tmp_path / "servers.d", {"echo": "http://127.0.0.1:9"})
    (config / "gateway.yaml").write_text(f"type: gateway\nlimits: {limits}\n")
    with pytest.raises(ConfigError) as refused:
        build_registry(load_config_dir(config))
    assert "gateway.yaml" in str(refused.value) and problem in str(refused.value)


def test_limits_are_read_from_the_gateway_document(tmp_path: Path) -> None:
    config = write_config(tmp_path / "servers.d", {"echo": "http://127.0.0.1:9"})
    (config / "gateway.yaml").write_text("type: gateway\nlimits: {sessions_per_principal: 7, max_sessions: 70}\n")
    limits = build_registry(load_config_dir(config)).limits
    assert (limits.sessions_per_principal, limits.max_sessions) == (7, 70)
    assert limits.requests_per_second_per_principal == Limits().requests_per_second_per_principal

"""What each backend actually receives: static secret headers, x-tfy-mcp-headers overrides, checked passthrough,
and never the caller's gateway credential. Observed at the backend (the lab's `headers` tool records its request);
the tool also echoes the headers to the caller, who gets them without any credential the gateway presented."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.backends import Probe, build_lab, received
from tests.lab_config import group, header_auth, remote, write_identities
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt, secure_gateway
from tests.sensitive import mark
from tests.support import LegacyOnly, serve
from virtual_mcp.types import PrincipalKind

LOGISTICS_AUDIENCE = "https://logistics.northwind.example/mcp"
SENTRY_SECRET = "sentry-service-token-0123456789"
mark(SENTRY_SECRET)


def group_doc(plain: str, sentry: str, logistics: str, audience: str) -> str:
    return group(
        "lab",
        remote("plain", plain),
        remote(
            "sentry",
            sentry,
            auth_data=header_auth(Authorization="Bearer tfy-secret://t:sentry:token"),
            forwardable_headers=["Authorization", "X-Org"],
        ),
        remote("logistics", logistics, auth_data={"type": "passthrough", "audience": audience}),
        remote("hidden", plain, ["team:nobody"]),
    )


class Lab:
    def __init__(self, gw: SecureGateway, probes: dict[str, Probe]) -> None:
        self.gw = gw
        self.probes = probes

    async def headers_seen(self, server: str, bearer: str, overrides: Any = None) -> dict[str, str]:
        """The headers the backend of `server` received for one call (the echo that came back holds no secret)."""
        for headers in (overrides or {}).values():
            mark(*(v.removeprefix("Bearer ") for v in headers.values() if isinstance(v, str)))
        extra = {"x-tfy-mcp-headers": json.dumps(overrides)} if overrides is not None else {}
        async with self.gw.client(f"/mcp-server/lab/{server}/server", bearer, extra) as client:
            return await received(client, self.probes["plain" if server == "hidden" else server])

    def everything_received(self) -> str:
        return json.dumps([p.headers for p in self.probes.values()])


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    probes = {name: Probe() for name in ("plain", "sentry", "logistics")}
    async with (
        serve(build_lab(probes["plain"]).http_app(path="/mcp")) as plain,
        serve(build_lab(probes["sentry"]).http_app(path="/mcp")) as sentry,
        serve(build_lab(probes["logistics"]).http_app(path="/mcp")) as logistics,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        text = group_doc(plain=plain.url, sentry=sentry.url, logistics=logistics.url, audience=LOGISTICS_AUDIENCE)
        (config / "lab.yaml").write_text(text)
        write_identities(config)
        secrets = {"tfy-secret://t:sentry:token": SENTRY_SECRET}
        async with secure_gateway(config, tmp_path / "data", secrets) as gw:
            yield Lab(gw, probes)


async def test_static_secret_header_reaches_only_its_server(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        assert (await t.headers_seen("sentry", token))["authorization"] == f"Bearer {SENTRY_SECRET}"
        assert "authorization" not in await t.headers_seen("plain", token)
        assert token not in t.everything_received()


async def test_the_log_scan_sees_gateway_lines(tmp_path: Path) -> None:
    """The whole-run scan in tests/conftest.py is not vacuous: gateway log lines reach it."""
    from tests.conftest import CAPTURED

    async with lab(tmp_path) as t:
        token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        await t.headers_seen("sentry", token)
        async with httpx.AsyncClient() as http:
            await http.post(f"{t.gw.url}/mcp", json={}, headers={"authorization": "Bearer vmcp_000000000000_x"})
    lines = CAPTURED[0].lines
    assert any(line.startswith("virtual_mcp.") for line in lines)
    assert any("refused POST on /mcp" in line for line in lines)


async def test_override_applies_to_the_named_server_only(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        overrides = {"lab/sentry": {"Authorization": "Bearer alice-own-sentry", "X-Org": "org-northwind-7f3a"}}
        seen = await t.headers_seen("sentry", token, overrides)
        assert seen["authorization"] == "Bearer alice-own-sentry" and seen["x-org"] == "org-northwind-7f3a"
        plain = await t.headers_seen("plain", token, overrides)
        assert "alice-own-sentry" not in json.dumps(plain) and "x-org" not in plain
        # Without the header the configured credential is back: overrides are per request.
        assert (await t.headers_seen("sentry", token))["authorization"] == f"Bearer {SENTRY_SECRET}"
        assert token not in t.everything_received()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "x-tfy-mcp-headers: not valid JSON"),
        ('["lab/sentry"]', "x-tfy-mcp-headers: must be a JSON object keyed 'group/server'"),
        ('{"sentry": {}}', "x-tfy-mcp-headers: key 'sentry' is not 'group/server'"),
        ('{"lab/nope": {}}', "x-tfy-mcp-headers: no server 'lab/nope' is available to you"),
        ('{"lab/hidden": {}}', "x-tfy-mcp-headers: no server 'lab/hidden' is available to you"),
        ('{"lab/sentry": "Bearer x"}', "x-tfy-mcp-headers: value for 'lab/sentry' must be an object"),
        ('{"lab/sentry": {"X-Evil": "1"}}', "header 'X-Evil' is not in the server's forwardable_headers"),
        ('{"lab/plain": {"Authorization": "x"}}', "header 'Authorization' is not in the server's forwardable_headers"),
        ('{"lab/sentry": {"Connection": "close"}}', "header 'Connection' is managed by the gateway"),
        ('{"lab/sentry": {"Bad Name": "1"}}', "'Bad Name' is not a valid header name"),
        (
            '{"lab/sentry": {"Authorization": "a\\r\\nX-Injected: 1"}}',
            "contains CR, LF, another control character or non-ASCII",
        ),
        ('{"lab/sentry": {"Authorization": 5}}', "value of 'Authorization' must be a string"),
        ('{"lab/sentry": {"X-Org": "caf\\u00e9"}}', "contains CR, LF, another control character or non-ASCII"),
        ('{"lab/sentry": {"Mcp-Param-Region": "eu"}}', "header 'Mcp-Param-Region' is managed by the gateway"),
    ],
)
async def test_bad_overrides_are_precise_400s(tmp_path: Path, raw: str, message: str) -> None:
    async with lab(tmp_path) as t:
        token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{t.gw.url}/mcp-server/lab/sentry/server",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"authorization": f"Bearer {token}", "x-tfy-mcp-headers": raw, "accept": "application/json"},
            )
        assert response.status_code == 400
        error = response.json()["error"]
        assert message in error["message"] and error["code"] == -32600
        # The gateway keeps serving that caller.
        assert (await t.headers_seen("sentry", token))["authorization"] == f"Bearer {SENTRY_SECRET}"


async def test_gateway_credential_cannot_be_smuggled_through_overrides(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        with pytest.raises(MCPError) as info:
            await t.headers_seen("sentry", token, {"lab/sentry": {"Authorization": f"Bearer {token}"}})
        assert info.value.code == -32600
        assert info.value.message.endswith("value of 'Authorization' carries a gateway credential")
        assert token not in info.value.message
        assert token not in t.everything_received()


async def test_checked_passthrough_forwards_only_a_jwt_for_that_audience(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        now = time.time()
        good = idp_jwt("alice@northwind.example", [GATEWAY_AUDIENCE, LOGISTICS_AUDIENCE], now, groups=["platform"])
        assert (await t.headers_seen("logistics", good))["authorization"] == f"Bearer {good}"
        # Passthrough is per server: the same caller's JWT reaches no other backend.
        assert good not in json.dumps(t.probes["plain"].headers + t.probes["sentry"].headers)
        assert good not in json.dumps(await t.headers_seen("plain", good))

        narrow = idp_jwt("alice@northwind.example", GATEWAY_AUDIENCE, now, groups=["platform"])
        with pytest.raises(MCPError) as mismatch:
            await t.headers_seen("logistics", narrow)
        assert mismatch.value.code == -32004
        assert "audience mismatch" in mismatch.value.message and LOGISTICS_AUDIENCE in mismatch.value.message
        assert narrow not in mismatch.value.message

        gateway_token = await t.gw.token(PrincipalKind.USER, "alice@northwind.example")
        with pytest.raises(MCPError) as not_jwt:
            await t.headers_seen("logistics", gateway_token)
        assert not_jwt.value.code == -32004 and "IdP JWT" in not_jwt.value.message
        assert narrow not in t.everything_received() and gateway_token not in t.everything_received()


class GetCounter:
    """Counts the standing GET (list_changed) streams a backend is asked to hold."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.gets = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            self.gets += 1
        await self.app(scope, receive, send)


async def test_per_caller_credentials_do_not_multiply_backend_streams(tmp_path: Path) -> None:
    probe = Probe()
    counter = GetCounter(LegacyOnly(build_lab(probe).http_app(path="/mcp")))
    async with serve(build_lab().http_app(path="/mcp")) as plain, serve(counter) as sentry:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(
            group_doc(plain=plain.url, sentry=sentry.url, logistics=plain.url, audience=LOGISTICS_AUDIENCE)
        )
        write_identities(config)
        secrets = {"tfy-secret://t:sentry:token": SENTRY_SECRET}
        async with secure_gateway(config, tmp_path / "data", secrets) as gw:
            t = Lab(gw, {"sentry": probe})
            token = await gw.token(PrincipalKind.USER, "alice@northwind.example")
            for i in range(20):
                seen = await t.headers_seen("sentry", token, {"lab/sentry": {"X-Org": f"org-{i}"}})
                assert seen["x-org"] == f"org-{i}"
            # The catalog and its list_changed stream use the server's own credential only: one stream, not 21.
            assert (await t.headers_seen("sentry", token))["authorization"] == f"Bearer {SENTRY_SECRET}"
            assert counter.gets <= 1

"""Client credentials (2LO) end to end: a real authorization server (oidc-provider), the gateway, a backend that
shows what it received. Token requests are counted at the authorization server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from mcp.shared.exceptions import MCPError

from tests.backends import Probe, build_lab, received
from tests.lab_config import CI, PLATFORM, group, identities, remote
from tests.oauth_server import CC_CLIENT_ID, AuthServer, authorization_server
from tests.security_support import OffsetClock, SecureGateway, secure_gateway
from tests.sensitive import mark
from tests.support import Served, serve
from virtual_mcp.types import PrincipalKind


def group_doc(backend: str, token_url: str, client_id: str) -> str:
    oauth = {
        "type": "oauth2",
        "grant_type": "client_credentials",
        "token_url": token_url,
        "client_id": client_id,
        "client_secret": "tfy-secret://t:analytics:client_secret",
        "scopes": ["mcp:read"],
    }
    return group("g", remote("analytics", backend, [f"team:{PLATFORM}", f"virtualaccount:{CI}"], auth_data=oauth))


IDS = identities({PLATFORM: ["alice@x.example"]}, [CI])


@dataclass
class Setup:
    auth: AuthServer
    backend: Served
    gw: SecureGateway
    clock: OffsetClock
    alice: str
    ci: str
    probe: Probe

    async def bearer_seen(self, token: str) -> str:
        async with self.gw.client("/mcp-server/g/analytics/server", token) as client:
            seen = await received(client, self.probe)
        return str(seen["authorization"]).removeprefix("Bearer ")


@asynccontextmanager
async def setup(tmp_path: Path, client_secret: str | None = None, **settings: Any) -> AsyncIterator[Setup]:
    probe = Probe()
    async with (
        authorization_server(access_token_ttl=100) as auth,
        serve(build_lab(probe).http_app(path="/mcp")) as backend,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "g.yaml").write_text(
            group_doc(backend=backend.url, token_url=auth.token_endpoint, client_id=CC_CLIENT_ID)
        )
        (config / "ids.yaml").write_text(IDS)
        secrets = {
            "tfy-secret://t:analytics:client_secret": client_secret or auth.secret(CC_CLIENT_ID),
        }
        clock = OffsetClock()
        async with secure_gateway(config, tmp_path / "data", secrets, clock=clock, **settings) as gw:
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            ci = await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
            await auth.reset()
            yield Setup(auth, backend, gw, clock, alice, ci, probe)


async def test_one_token_for_every_caller_with_the_backend_as_audience(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        first = await s.bearer_seen(s.alice)
        assert await s.bearer_seen(s.ci) == first and await s.bearer_seen(s.alice) == first
        assert await s.auth.token_requests("client_credentials") == 1
        claims = jwt.decode(
            first,
            jwt.PyJWKClient(s.auth.jwks_uri).get_signing_key_from_jwt(first).key,
            algorithms=["RS256"],
            audience=f"{s.backend.url}/mcp",
        )
        assert claims["client_id"] == CC_CLIENT_ID and "mcp:read" in claims["scope"]
        # Neither caller's gateway token reached the backend.
        assert first not in (s.alice, s.ci)
        events = await s.gw.audit()
        assert [(e.subject, e.server, e.tool, e.auth_mode, e.outcome) for e in events] == [
            (subject, "g/analytics", "headers", "oauth2:client_credentials", "allowed")
            for subject in ("user:alice@x.example", "virtualaccount:ci", "user:alice@x.example")
        ]
        mark(first)
        assert s.gw.leaks() == []


@pytest.mark.parametrize("slow_provider", [False, True])
async def test_fifty_callers_past_eighty_percent_cause_exactly_one_token_request(
    tmp_path: Path, slow_provider: bool
) -> None:
    async with setup(tmp_path) as s:
        first = await s.bearer_seen(s.alice)
        s.clock.offset = 85  # past 80% of the 100 s lifetime
        if slow_provider:
            await s.auth.behave(token_delay_ms=500)
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(s.bearer_seen, s.alice)
        with anyio.fail_after(20):
            # The background refresh lands: the new token is in use (counting the provider's requests is not
            # enough: a slow provider has counted the request long before its answer is stored).
            while await s.bearer_seen(s.ci) == first:
                pass
        assert await s.auth.token_requests("client_credentials") == 2
        assert await s.bearer_seen(s.alice) != first


async def test_expired_token_cold_concurrency_is_one_request(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await s.bearer_seen(s.alice)
        s.clock.offset = 500  # long expired
        await s.auth.behave(token_delay_ms=300)
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(s.bearer_seen, s.alice)
        assert await s.auth.token_requests("client_credentials") == 2


async def test_provider_failures_are_retried_or_reported(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await s.auth.behave(token_fail_status=500, token_fail_count=1)
        assert await s.bearer_seen(s.alice)
        await s.auth.behave(token_fail_status=429, token_fail_count=1)
        s.clock.offset = 500
        assert await s.bearer_seen(s.alice)
        s.clock.offset = 1000
        await s.auth.behave(token_fail_status=500, token_fail_count=None)
        with pytest.raises(MCPError) as down:
            await s.bearer_seen(s.alice)
        assert down.value.code == -32006 and "HTTP 500" in down.value.message
        await s.auth.behave(token_fail_status=None, omit_expires_in=True)
        assert await s.bearer_seen(s.alice)
        # Each renewal is one outcome, whatever it took in retries: three went through, one gave up.
        refreshes = partial(s.gw.metrics.registry.get_sample_value, "vmcp_token_refreshes_total")
        assert refreshes({"kind": "2lo", "outcome": "transient"}) == 1
        assert (refreshes({"kind": "2lo", "outcome": "ok"}) or 0) >= 3


async def test_a_wrong_client_secret_is_a_clear_error(tmp_path: Path) -> None:
    async with setup(tmp_path, client_secret="not-the-secret-0000") as s:
        with pytest.raises(MCPError) as refused:
            await s.bearer_seen(s.alice)
        assert refused.value.code == -32005 and "invalid_client" in refused.value.message
        assert "not-the-secret" not in refused.value.message
        sample = s.gw.metrics.registry.get_sample_value
        # Every refused request the provider saw (listing the tools, then the call) is counted as such.
        refused_count = sample("vmcp_token_refreshes_total", {"kind": "2lo", "outcome": "refused"})
        assert refused_count == await s.auth.token_requests("client_credentials") >= 1


async def test_a_token_endpoint_timeout_is_retried_then_reported(tmp_path: Path) -> None:
    """A client-credentials request that timed out changed nothing that matters at the provider: it is retried."""
    async with setup(tmp_path, token_timeout_seconds=0.5) as s:
        await s.auth.behave(token_delay_ms=1500, token_delay_count=1)
        assert await s.bearer_seen(s.alice)
        assert await s.auth.token_requests("client_credentials") == 2  # the slow one, then the retry
        s.clock.offset = 500  # expired
        await s.auth.behave(token_delay_ms=1500, token_delay_count=None)
        with pytest.raises(MCPError) as slow:
            await s.bearer_seen(s.alice)
        assert slow.value.code == -32006 and "did not answer: ReadTimeout" in slow.value.message
        assert await s.auth.token_requests("client_credentials") == 2 + 3  # bounded: three attempts
        await s.auth.behave(token_delay_ms=0)
        assert await s.bearer_seen(s.alice)  # and the next call recovers

"""Per-user OAuth (authorization code + PKCE S256) end to end against a real authorization server: the URL
elicitation, the gateway's consent link, the callback, stored tokens, refresh with rotation, disconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult

from tests.backends import Probe, build_lab, received
from tests.lab_config import ALICE, BOB, CI, MALLORY, PLATFORM, group, identities, remote
from tests.oauth.browser import connect
from tests.oauth_server import CODE_CLIENT_ID, AuthServer, authorization_server
from tests.security_support import OffsetClock, SecureGateway, secure_gateway
from tests.sensitive import mark
from tests.support import Served, bind, serve
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore


def group_doc(backend: str, authorize: str, token: str, revoke: str, issuer: str, client_id: str) -> str:
    oauth = {
        "type": "oauth2",
        "grant_type": "authorization_code",
        "authorization_url": authorize,
        "token_url": token,
        "revocation_url": revoke,
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": "tfy-secret://t:github:client_secret",
        "scopes": ["mcp:tools"],
        "code_challenge_methods_supported": ["S256"],
    }
    return group("g", remote("github", backend, auth_data=oauth))


# A virtual account named like a user (a configuration mistake) is still not that user.
IDS = identities({PLATFORM: [ALICE, BOB, MALLORY]}, [CI, ALICE])


@dataclass
class Setup:
    auth: AuthServer
    backend: Served
    gw: SecureGateway
    clock: OffsetClock
    probe: Probe

    async def call(self, token: str) -> dict[str, Any]:
        """The headers the backend received for one call of its `headers` tool."""
        async with self.gw.client("/mcp-server/g/github/server", token) as client:
            return await received(client, self.probe)

    async def consent_link(self, token: str) -> str:
        with pytest.raises(MCPError) as needed:
            await self.call(token)
        assert needed.value.code == -32042
        [elicitation] = needed.value.data["elicitations"]
        assert elicitation["mode"] == "url" and "connect your account for g/github" in elicitation["message"]
        # The text carries the link too, for clients that show an error's message and never its data.
        assert f"({elicitation['url']}), then retry" in str(needed.value)
        return str(elicitation["url"])


@asynccontextmanager
async def setup(tmp_path: Path, **settings: Any) -> AsyncIterator[Setup]:
    sock = bind()
    callback = f"http://127.0.0.1:{sock.getsockname()[1]}/oauth/callback"
    async with (
        authorization_server(redirect_uris=(callback,), access_token_ttl=100) as auth,
        serve(build_lab(probe := Probe()).http_app(path="/mcp")) as backend,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        text = group_doc(
            backend=backend.url,
            authorize=auth.authorization_endpoint,
            token=auth.token_endpoint,
            revoke=auth.revocation_endpoint,
            issuer=auth.issuer,
            client_id=CODE_CLIENT_ID,
        )
        (config / "g.yaml").write_text(text)
        (config / "ids.yaml").write_text(IDS)
        secrets = {
            "tfy-secret://t:github:client_secret": auth.secret(CODE_CLIENT_ID),
        }
        clock = OffsetClock()
        async with secure_gateway(config, tmp_path / "data", secrets, clock=clock, sock=sock, **settings) as gw:
            yield Setup(auth, backend, gw, clock, probe)


async def test_connect_call_refresh_and_disconnect(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        bob = await s.gw.token(PrincipalKind.USER, "bob@northwind.example")
        link = await s.consent_link(alice)
        assert link.startswith(f"{s.gw.url}/oauth/start?ticket=")
        page = await connect(link, alice)
        assert page.status_code == 200 and "Connected" in page.text

        seen = await s.call(alice)
        access = str(seen["authorization"]).removeprefix("Bearer ")
        key = jwt.PyJWKClient(s.auth.jwks_uri).get_signing_key_from_jwt(access).key
        claims = jwt.decode(access, key, algorithms=["RS256"], audience=f"{s.backend.url}/mcp")
        assert claims["sub"] == "alice@northwind.example"
        # The trail: first the call that needed consent, then the connection, then the call with alice's own token;
        # none holds the token or the consent link's ticket.
        mark(access, link.split("ticket=", 1)[1])
        allowed, connected, needed = await s.gw.audit(user="alice@northwind.example")
        assert (connected.endpoint, connected.method, connected.server, connected.outcome, connected.error) == (
            "/oauth/callback",
            "oauth/consent",
            "g/github",
            "allowed",
            None,
        )
        assert (needed.server, needed.tool, needed.auth_mode, needed.outcome) == (
            "g/github",
            "headers",
            "oauth2:authorization_code",
            "failed",
        )
        assert needed.error == "no connected account: open the link to connect your account for g/github, then retry"
        assert (allowed.auth_mode, allowed.outcome, allowed.error) == ("oauth2:authorization_code", "allowed", None)
        assert s.gw.leaks() == []
        # The authorization request carried state, an S256 challenge and the backend as RFC 8707 resource.
        stats = await s.auth.stats()
        assert await s.auth.token_requests("authorization_code") == 1, stats

        # Tokens are per user: bob has not connected.
        assert (await s.consent_link(bob)).startswith(f"{s.gw.url}/oauth/start?ticket=")
        async with httpx2.AsyncClient() as http:
            listing = await http.get(f"{s.gw.url}/oauth/connections", headers={"authorization": f"Bearer {alice}"})
            assert listing.json() == {"user": "alice@northwind.example", "connected": ["g/github"]}

        # Past 100% of the lifetime, twice: each refresh uses the newest (rotated) refresh token.
        for round_ in (1, 2):
            s.clock.offset += 150
            renewed = str((await s.call(alice))["authorization"]).removeprefix("Bearer ")
            assert renewed != access
            access = renewed
            assert await s.auth.token_requests("refresh_token") == round_

        # A used consent link does not work twice.
        assert (await connect(link, alice)).status_code == 400

        stored = await OAuthTokenStore(s.gw.db, LocalKeyProvider.load(tmp_path / "data")).get(
            "g/github", "user:alice@northwind.example"
        )
        assert stored is not None
        async with httpx2.AsyncClient() as http:
            gone = await http.delete(
                f"{s.gw.url}/oauth/connections/g/github", headers={"authorization": f"Bearer {alice}"}
            )
            assert gone.json() == {"disconnected": "g/github", "provider": "revoked at the provider and deleted"}
            # RFC 7009 at the provider: refresh token, then access token; the grant is dead there too.
            assert (await s.auth.stats())["revocation"]["total"] == 2
            dead = await http.post(
                s.auth.token_endpoint,
                data={"grant_type": "refresh_token", "refresh_token": stored["refresh_token"]},
                auth=(CODE_CLIENT_ID, s.auth.secret(CODE_CLIENT_ID)),
            )
            assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
        await s.consent_link(alice)


async def test_listing_a_per_user_server_asks_for_consent(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        async with s.gw.client("/mcp-server/g/github/server", alice) as client:
            with pytest.raises(MCPError) as needed:
                await client.list_tools()
        assert needed.value.code == -32042
        # On /mcp the server is simply left out until the user connects.
        async with s.gw.client("/mcp", alice) as client:
            assert [t.name for t in await client.list_tools()] == []


@pytest.mark.parametrize("published", [["plain"], []])
async def test_a_provider_whose_metadata_lacks_s256_is_refused(tmp_path: Path, published: list[str]) -> None:
    """The configured issuer's metadata decides: a provider that publishes only `plain`, or no PKCE method at all,
    never sees the user's browser; once it publishes S256, the same link works."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        link = await s.consent_link(alice)
        await s.auth.behave(metadata_pkce_methods=published)
        refused = await connect(link, alice)
        assert refused.status_code == 502, refused.text
        assert "requires PKCE with S256 and does not start this flow" in refused.text
        listed = "plain" if published else "does not list code_challenge_methods_supported (no PKCE)"
        assert listed in refused.text
        assert (await s.auth.stats())["authorization"]["total"] == 0  # the browser was never sent there
        await s.auth.behave(metadata_pkce_methods=None)
        connected = await connect(link, alice)
        assert connected.status_code == 200 and "Connected" in connected.text
        assert (await s.call(alice))["authorization"].startswith("Bearer ")


async def test_a_refused_consent_stores_nothing(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        link = await s.consent_link(alice)
        await s.auth.behave(interaction_error="access_denied")
        page = await connect(link, alice)
        assert page.status_code == 400 and "access_denied" in page.text
        await s.consent_link(alice)  # still not connected


async def test_a_refresh_that_times_out_is_never_retried_with_the_same_refresh_token(tmp_path: Path) -> None:
    """The provider may have rotated the refresh token before the gateway gave up waiting; presenting it again
    would be reuse, which revokes the grant. The gateway drops it and asks the user to connect again."""
    async with setup(tmp_path, token_timeout_seconds=0.5) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        assert (await connect(await s.consent_link(alice), alice)).status_code == 200
        await s.call(alice)
        s.clock.offset += 150  # expired: this call must refresh
        await s.auth.behave(token_delay_ms=1500, token_delay_count=1)
        with pytest.raises(MCPError) as needed:
            await s.call(alice)
        assert needed.value.code == -32042 and "could not be renewed safely" in needed.value.message
        assert await s.auth.token_requests("refresh_token") == 1  # sent once, never again
        with pytest.raises(MCPError):
            await s.call(alice)
        assert await s.auth.token_requests("refresh_token") == 1
        assert (await connect(str(needed.value.data["elicitations"][0]["url"]), alice)).status_code == 200
        assert await s.call(alice)  # connected again


async def test_an_invalid_grant_asks_the_user_to_connect_again(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        assert (await connect(await s.consent_link(alice), alice)).status_code == 200
        await s.call(alice)
        s.clock.offset += 150
        await s.auth.behave(token_fail_status=400, token_fail_error="invalid_grant", token_fail_count=1)
        with pytest.raises(MCPError) as needed:
            await s.call(alice)
        assert needed.value.code == -32042 and "expired or was revoked" in needed.value.message
        assert await s.auth.token_requests("refresh_token") == 1  # terminal: not retried
        async with httpx2.AsyncClient() as http:
            listing = await http.get(f"{s.gw.url}/oauth/connections", headers={"authorization": f"Bearer {alice}"})
        assert listing.json()["connected"] == []  # the dead token set is gone


@pytest.mark.parametrize("slow_provider", [False, True])
async def test_fifty_concurrent_calls_on_an_expired_token_refresh_once(tmp_path: Path, slow_provider: bool) -> None:
    """Per (user, server) lock: the provider rotates refresh tokens and revokes the grant on reuse, so a second
    refresh with the same refresh token would break every later call."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        assert (await connect(await s.consent_link(alice), alice)).status_code == 200
        first = str((await s.call(alice))["authorization"])
        s.clock.offset += 150
        if slow_provider:
            await s.auth.behave(token_delay_ms=300)
        seen: list[str] = []

        async def call() -> None:
            seen.append(str((await s.call(alice))["authorization"]))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
        assert len(set(seen)) == 1 and seen[0] != first and len(seen) == 50
        assert await s.auth.token_requests("refresh_token") == 1
        s.clock.offset += 150
        assert str((await s.call(alice))["authorization"]) not in (first, seen[0])  # the grant is alive


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_client_that_opens_links_is_asked_to_connect_and_its_call_goes_on(tmp_path: Path, mode: str) -> None:
    """A caller that declared URL-mode elicitation is asked to open the consent link through the elicitation bridge
    (2025-11-25: on the call's stream, the call waiting for the connection; 2026-07-28: `input_required`, then its
    retry); once connected, the same call reaches the backend with the user's own token. A caller that declines is
    told -32042, with the link."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        bob = await s.gw.token(PrincipalKind.USER, "bob@northwind.example")
        opened: list[str] = []

        async def opens_the_link(message: str, response_type: Any, params: Any, context: Any) -> Any:
            assert params.mode == "url" and "connect your account for g/github" in message
            opened.append(params.url)
            page = await connect(params.url, alice)
            assert page.status_code == 200 and "Connected" in page.text
            return ElicitResult(action="accept")

        async def declines(message: str, response_type: Any, params: Any, context: Any) -> Any:
            return ElicitResult(action="decline")

        url = f"{s.gw.url}/mcp-server/g/github/server"
        transport = StreamableHttpTransport(url, auth=alice)
        async with Client(transport, mode=mode, elicitation_handler=opens_the_link) as client:
            seen = await received(client, s.probe)
        assert len(opened) == 1 and opened[0].startswith(f"{s.gw.url}/oauth/start?ticket=")
        assert str(seen["authorization"]).startswith("Bearer ")
        async with Client(StreamableHttpTransport(url, auth=bob), mode=mode, elicitation_handler=declines) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("headers", {})
        assert refused.value.code == -32042 and "/oauth/start?ticket=" in str(refused.value)

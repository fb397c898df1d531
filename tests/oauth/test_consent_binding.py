"""A consent link connects an account only for the gateway user who proves, in the browser, that it is theirs.

End to end against the real authorization server (oidc-provider): Mallory's link opened by Alice, who is logged in
at the provider; a flow Mallory started, completed at the provider in Alice's browser; a callback replayed in another
browser. In each, Alice's provider tokens must never be stored under Mallory's gateway account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError

from tests.backends import received
from tests.lab_config import ALICE, MALLORY
from tests.oauth.browser import Browser, connect
from tests.oauth.test_authorization_code import Setup, setup
from tests.oauth.test_crash_safety import Scene, scene
from tests.processes import gateway_process
from tests.sensitive import mark
from tests.store_mode import state_database
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider, TokenStore
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore


async def stored(s: Setup, tmp_path: Path, user: str) -> dict[str, Any] | None:
    return await OAuthTokenStore(s.gw.db, LocalKeyProvider.load(tmp_path / "data")).get("g/github", f"user:{user}")


def provider_subject(s: Setup | Scene, answer: dict[str, Any]) -> str:
    """Whose provider account the backend saw: the `sub` of the access token the gateway presented."""
    access = str(answer["authorization"]).removeprefix("Bearer ")
    mark(access)
    key = jwt.PyJWKClient(s.auth.jwks_uri).get_signing_key_from_jwt(access).key
    return str(jwt.decode(access, key, algorithms=["RS256"], audience=f"{s.backend.url}/mcp")["sub"])


def ticket_link(link: str) -> str:
    ticket_of(link)
    return link


def ticket_of(link: str) -> str:
    ticket = link.split("ticket=", 1)[1]
    mark(ticket)
    return ticket


async def test_mallorys_link_opened_by_alice_connects_nothing(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        mallory = await s.gw.token(PrincipalKind.USER, MALLORY)
        await s.auth.behave(login_account=ALICE)  # whoever goes to the provider in a browser is Alice there
        link = await s.consent_link(mallory)
        ticket_of(link)
        async with Browser() as browser:
            page = await browser.open(link)
            # The link opens the gateway's own sign-in page, naming the server, not the provider.
            assert page.status_code == 200, page.text
            assert str(page.url).startswith(s.gw.url) and "g/github" in page.text and MALLORY not in page.text
            assert (await s.auth.stats())["authorization"]["total"] == 0
            refused = await browser.submit(page, alice)
        assert refused.status_code == 403, refused.text
        assert "nothing was connected" in refused.text and alice not in refused.text
        assert ticket_of(link) not in refused.text
        # Alice never reached the provider: no code, no token, nothing under Mallory's name.
        stats = await s.auth.stats()
        assert stats["authorization"]["total"] == 0 and stats["token"]["total"] == 0, stats
        assert await stored(s, tmp_path, MALLORY) is None
        await s.consent_link(mallory)  # Mallory still has no connected account
        # The trail says who used whose link.
        [event] = await s.gw.audit(user=ALICE, method="oauth/consent")
        assert (event.endpoint, event.server, event.outcome) == ("/oauth/start", "g/github", "denied")
        assert event.error == f"consent link of user:{MALLORY} used by user:{ALICE}; nothing was connected"
        # The link reached someone else: it is spent, even for Mallory.
        assert (await connect(link, mallory)).status_code == 400

        # Each connects their own account through their own link.
        assert "Connected" in (await connect(await s.consent_link(alice), alice)).text
        assert provider_subject(s, await s.call(alice)) == ALICE
        await s.auth.behave(login_account=MALLORY)
        assert "Connected" in (await connect(await s.consent_link(mallory), mallory)).text
        assert provider_subject(s, await s.call(mallory)) == MALLORY
        assert provider_subject(s, await s.call(alice)) == ALICE
        assert s.gw.leaks() == []


async def test_a_flow_mallory_started_and_alice_completed_at_the_provider_is_refused(tmp_path: Path) -> None:
    """Mallory signs in on his own link, stops before the provider and sends the provider's URL to Alice; her
    browser (logged in there as Alice) brings the code back to the gateway, without Mallory's browser cookie."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        mallory = await s.gw.token(PrincipalKind.USER, MALLORY)
        link = await s.consent_link(mallory)
        ticket_of(link)
        async with Browser() as mallorys:
            page = await mallorys.open(link)
            to_provider = await mallorys.submit(page, mallory, stop_at=s.auth.authorization_endpoint)
        assert to_provider.status_code == 303
        lure = to_provider.headers["location"]
        assert lure.startswith(s.auth.authorization_endpoint)
        await s.auth.behave(login_account=ALICE)
        async with Browser() as alices:
            landed = await alices.open(lure)
        assert str(landed.url).startswith(f"{s.gw.url}/oauth/callback?")
        assert landed.status_code == 403, landed.text
        assert "not started in this browser" in landed.text and "nothing was connected" in landed.text
        assert await s.auth.token_requests("authorization_code") == 0  # Alice's code was never exchanged
        assert await stored(s, tmp_path, MALLORY) is None
        await s.consent_link(mallory)
        [event] = await s.gw.audit(user=MALLORY, method="oauth/consent")
        assert (event.endpoint, event.server, event.outcome) == ("/oauth/callback", "g/github", "denied")
        assert "arrived in another browser" in (event.error or "")
        # Alice connects her own account, in her own browser, through her own link.
        assert "Connected" in (await connect(await s.consent_link(alice), alice)).text
        assert provider_subject(s, await s.call(alice)) == ALICE
        await s.consent_link(mallory)


async def test_a_callback_replayed_in_another_browser_is_refused(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        mallory = await s.gw.token(PrincipalKind.USER, MALLORY)
        callback = f"{s.gw.url}/oauth/callback"
        async with Browser() as alices, Browser() as mallorys:
            # The provider's answer reaches Mallory's browser before Alice's: refused, and the state is spent.
            first = await alices.submit(await alices.open(await s.consent_link(alice)), alice, stop_at=callback)
            answer = first.headers["location"]
            assert answer.startswith(callback)
            assert (await mallorys.open(answer)).status_code == 403
            assert (await alices.open(answer)).status_code == 400
            await s.consent_link(alice)  # not connected
            # Alice's own answer in her own browser connects her; replayed in Mallory's afterwards, it is spent.
            second = await alices.submit(await alices.open(await s.consent_link(alice)), alice, stop_at=callback)
            answer = second.headers["location"]
            done = await alices.open(answer)
            assert done.status_code == 200 and "Connected" in done.text
            assert (await mallorys.open(answer)).status_code == 400
        assert await s.auth.token_requests("authorization_code") == 1
        assert provider_subject(s, await s.call(alice)) == ALICE
        assert await stored(s, tmp_path, MALLORY) is None
        await s.consent_link(mallory)


async def test_asking_again_gives_the_same_link_and_never_spends_another_users(tmp_path: Path) -> None:
    """Pending tickets are per user: one per (user, server), renewed when asked for again, so a busy user
    neither grows the table nor evicts anyone else's link, and the link a client showed first still works."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        mallory = await s.gw.token(PrincipalKind.USER, MALLORY)
        link = await s.consent_link(alice)
        mallorys = {await s.consent_link(mallory) for _ in range(20)}
        assert len(mallorys) == 1
        assert await s.consent_link(alice) == link
        # The elicitation id is as stable as the link, and says nothing of its ticket.
        ids = set()
        for _ in range(2):
            with pytest.raises(MCPError) as needed:
                await s.call(alice)
            [elicitation] = needed.value.data["elicitations"]
            assert elicitation["url"] == link
            ids.add(elicitation["elicitationId"])
        [elicitation_id] = ids
        assert len(elicitation_id) == 16 and elicitation_id not in ticket_of(link)
        assert "Connected" in (await connect(link, alice)).text
        assert provider_subject(s, await s.call(alice)) == ALICE


async def test_in_local_mode_the_local_user_is_signed_in_and_only_their_links_connect(tmp_path: Path) -> None:
    """`serve --local-user` (a real process): on loopback the browser is the local user without a credential, so
    the page only asks to confirm; a link made for any other account (a token on the same data directory) still
    connects nothing."""
    async with scene(tmp_path) as s:
        async with state_database(s.data) as db:
            _, mallory = await TokenStore(db).create(PrincipalKind.USER, MALLORY)
            mark(mallory)
        args = ["--config", str(s.config), "--port", str(s.port), "--data-dir", str(s.data), "--local-user", ALICE]
        async with gateway_process(args):

            async def call(token: str | None) -> dict[str, Any]:
                transport = StreamableHttpTransport(f"{s.url}/mcp-server/g/github/server", auth=token)
                async with Client(transport) as client:
                    return await received(client, s.probe)  # read at the backend: the echo is scrubbed

            async def link(token: str | None) -> str:
                with pytest.raises(MCPError) as needed:
                    await call(token)
                assert needed.value.code == -32042
                return ticket_link(str(needed.value.data["elicitations"][0]["url"]))

            async with Browser() as browser:
                page = await browser.open(await link(mallory))
                assert page.status_code == 200 and f"You are signed in as <b>{ALICE}</b> (local mode)" in page.text
                refused = await browser.submit(page, None)
                assert refused.status_code == 403 and "another gateway account" in refused.text
                page = await browser.open(await link(None))
                assert 'name="credential"' not in page.text
                done = await browser.submit(page, None)
            assert done.status_code == 200 and "Connected" in done.text, done.text
            assert provider_subject(s, await call(None)) == ALICE
            await link(mallory)
        assert (await s.auth.stats())["authorization"]["total"] == 1

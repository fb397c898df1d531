"""Revocation as an operator does it, against a running gateway and a real authorization server: `token revoke` and
`virtual-mcp revoke --user` take effect on the very next request, the user's upstream tokens are revoked at the
provider (RFC 7009, counted there) and gone from the vault, the running gateway drops what it held in memory, and
every revocation is in the audit trail."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.lab_config import ALICE
from tests.oauth.browser import Browser, connect
from tests.oauth.test_authorization_code import setup
from tests.oauth_server import CODE_CLIENT_ID
from tests.security_support import GATEWAY_AUDIENCE, idp_jwt
from tests.store_mode import refused_after_revocation
from tests.test_cli import run
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

GITHUB = "/mcp-server/g/github/server"
ACCEPT = "application/json, text/event-stream"


async def status_of(url: str, bearer: str) -> int:
    """The HTTP status a tools/list with `bearer` gets (2026-07-28 style: no session needed)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    headers = {
        "accept": ACCEPT,
        "authorization": f"Bearer {bearer}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    async with httpx2.AsyncClient() as http:
        return (await http.post(url, json=body, headers=headers)).status_code


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in a thread of its own (it runs its own event loop), as an operator's shell would."""
    return await anyio.to_thread.run_sync(partial(run, list(args), capsys))


async def test_revoking_a_token_and_then_the_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    async with setup(tmp_path, revocation_poll_seconds=0.05) as s:
        url = f"{s.gw.url}{GITHUB}"
        first = await s.gw.token(PrincipalKind.USER, ALICE)
        second = await s.gw.token(PrincipalKind.USER, ALICE)
        assert (await connect(await s.consent_link(first), first)).status_code == 200
        assert "authorization" in await s.call(first)
        store = OAuthTokenStore(s.gw.db, LocalKeyProvider.load(tmp_path / "data"))
        stored = await store.get("g/github", f"user:{ALICE}")
        assert stored is not None
        early_jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
        assert await status_of(url, early_jwt) == 200

        # One token: refused on the next request; the other still works.
        [info] = [t for t in await s.gw.tokens.list() if t.subject == f"user:{ALICE}"][:1]
        code, out, err = await cli(capsys, "token", "revoke", info.id, "--data-dir", data)
        assert code == 0, err
        revoked_one, kept = (first, second) if (await s.gw.tokens.verify(first)) is None else (second, first)
        await refused_after_revocation(partial(status_of, url, revoked_one))
        assert await status_of(url, kept) == 200

        # The user: every gateway token, the upstream grant (at the provider too), and earlier IdP JWTs.
        revocations_before = (await s.auth.stats())["revocation"]["total"]
        code, out, err = await cli(
            capsys,
            "revoke",
            "--user",
            "Alice@Northwind.example",
            "--config",
            str(tmp_path / "servers.d"),
            "--data-dir",
            data,
        )
        assert code == 0, err
        assert out.splitlines()[:2] == [
            f"revoked {ALICE}: 1 gateway token(s)",
            "  g/github: revoked at the provider and deleted",
        ]
        await refused_after_revocation(partial(status_of, url, kept))
        assert await store.get("g/github", f"user:{ALICE}") is None
        assert (await s.auth.stats())["revocation"]["total"] == revocations_before + 2
        async with httpx2.AsyncClient() as http:
            dead = await http.post(
                s.auth.token_endpoint,
                data={"grant_type": "refresh_token", "refresh_token": stored["refresh_token"]},
                auth=(CODE_CLIENT_ID, s.auth.secret(CODE_CLIENT_ID)),
            )
        assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"

        # The running gateway has applied it: the JWT issued before is refused, nothing of alice's is in memory.
        await s.gw.runtime.revocations_applied()
        assert await status_of(url, early_jwt) == 401
        fresh = await s.gw.token(PrincipalKind.USER, ALICE)
        with pytest.raises(MCPError) as reconnect:
            await s.call(fresh)
        assert reconnect.value.code == -32042
        late_jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() + 2, groups=["platform"])
        assert await status_of(url, late_jwt) != 401  # a sign-in after the revocation is accepted

        user_event, token_event = await s.gw.audit(method="revoke")
        assert token_event.detail == {"token": info.id, "subject": f"user:{ALICE}"}
        assert user_event.subject.startswith("operator:") and user_event.outcome == "allowed"
        assert user_event.detail == {
            "user": ALICE,
            "gateway_tokens_revoked": 1,
            "upstream": {"g/github": "revoked at the provider and deleted"},
            "known": True,
        }
        assert s.gw.leaks() == []


async def test_revoking_without_the_configuration_still_deletes_upstream_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        assert (await connect(await s.consent_link(alice), alice)).status_code == 200
        revocations_before = (await s.auth.stats())["revocation"]["total"]
        code, out, err = await cli(capsys, "revoke", "--user", ALICE, "--data-dir", str(tmp_path / "data"))
        assert code == 0, err
        assert "g/github: deleted (no configuration given or the server is no longer configured)" in out
        assert (await s.auth.stats())["revocation"]["total"] == revocations_before  # no provider call without config
        store = OAuthTokenStore(s.gw.db, LocalKeyProvider.load(tmp_path / "data"))
        assert await store.get("g/github", f"user:{ALICE}") is None


async def test_a_bad_configuration_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every input problem is found before anything is revoked: the user keeps working."""
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        broken = tmp_path / "broken.d"
        broken.mkdir()
        (broken / "g.yaml").write_text("name: g\ntype: provider-account/mcp-server-group\ncolour: blue\n")
        code, _, err = await cli(
            capsys, "revoke", "--user", ALICE, "--config", str(broken), "--data-dir", str(tmp_path / "data")
        )
        assert code == 2 and "colour: unknown key" in err
        assert await status_of(f"{s.gw.url}{GITHUB}", alice) == 200
        assert await s.gw.audit(method="revoke") == []
        code, _, err = await cli(capsys, "revoke", "--user", ALICE, "--data-dir", str(tmp_path / "elsewhere"))
        # A data directory that holds none of the gateway's state: no database (embedded), or no master key for the
        # shared database (PostgreSQL). Refused either way, nothing revoked.
        assert code == 2 and ("no gateway database in" in err or "master.key" in err)
        assert await status_of(f"{s.gw.url}{GITHUB}", alice) == 200


async def test_revoking_a_user_ends_their_consents_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consent Alice signed in to before `revoke --user` must not store tokens for her when the provider answers
    afterwards, and a link she was given before is dead."""
    async with setup(tmp_path, revocation_poll_seconds=0.05) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        async with Browser() as browser:
            to_provider = await browser.connect(
                await s.consent_link(alice), alice, stop_at=s.auth.authorization_endpoint
            )
            assert to_provider.status_code == 303
            later = await s.consent_link(await s.gw.token(PrincipalKind.USER, ALICE))
            code, _, err = await cli(capsys, "revoke", "--user", ALICE, "--data-dir", str(tmp_path / "data"))
            assert code == 0, err
            await s.gw.runtime.revocations_applied()
            answered = await browser.open(to_provider.headers["location"])
            assert answered.status_code == 400 and "unknown, used or expired authorization state" in answered.text
            assert (await browser.open(later)).status_code == 400
        assert await s.auth.token_requests("authorization_code") == 0
        store = OAuthTokenStore(s.gw.db, LocalKeyProvider.load(tmp_path / "data"))
        assert await store.get("g/github", f"user:{ALICE}") is None
        # Alice, given access again, connects afresh.
        fresh = await s.gw.token(PrincipalKind.USER, ALICE)
        assert "Connected" in (await connect(await s.consent_link(fresh), fresh)).text

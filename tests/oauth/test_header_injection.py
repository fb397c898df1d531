"""A provider's access token is written into the `Authorization` header the gateway sends a backend. One holding CR
or LF would add headers of the provider's choosing (or, on a pooled keep-alive connection, a whole request) to what
the backend receives. Refused where the token arrives (the real authorization server, told to hand one out) and
where headers are written (a token stored before that check existed): the backend never sees it, the error names
the header and never the value, and the next good token works."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.backends import Probe, build_lab
from tests.oauth.test_client_credentials import IDS, Setup, group_doc
from tests.oauth_server import CC_CLIENT_ID, authorization_server
from tests.security_support import OffsetClock, secure_gateway
from tests.sensitive import mark
from tests.support import serve
from virtual_mcp.outbound.oauth_client import TokenSet
from virtual_mcp.outbound.token_cache import VaultTokenCache
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

INJECTED = "\r\nX-Injected: smuggled"


class Recorder:
    """The backend, with the header names of every request it received (what a smuggled header would show in)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[set[bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append({name for name, _ in scope["headers"]})
        await self.app(scope, receive, send)

    def smuggled(self) -> bool:
        return any(b"x-injected" in names for names in self.seen)


@asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Setup, Recorder]]:
    probe = Probe()
    backend_app = Recorder(build_lab(probe).http_app(path="/mcp"))
    async with authorization_server(access_token_ttl=100) as auth, serve(backend_app) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "g.yaml").write_text(
            group_doc(backend=backend.url, token_url=auth.token_endpoint, client_id=CC_CLIENT_ID)
        )
        (config / "ids.yaml").write_text(IDS)
        secrets = {"tfy-secret://t:analytics:client_secret": auth.secret(CC_CLIENT_ID)}
        clock = OffsetClock()
        async with secure_gateway(config, tmp_path / "data", secrets, clock=clock) as gw:
            alice = await gw.token(PrincipalKind.USER, "alice@x.example")
            ci = await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
            await auth.reset()
            yield Setup(auth, backend, gw, clock, alice, ci, probe), backend_app


async def test_a_token_with_crlf_from_the_provider_is_refused_at_receipt(tmp_path: Path) -> None:
    async with setup(tmp_path) as (s, backend):
        await s.auth.behave(access_token_suffix=INJECTED)
        with pytest.raises(MCPError) as caught:
            await s.bearer_seen(s.alice)
        assert caught.value.error.code == -32005
        assert caught.value.error.message == (
            "token endpoint answered an access_token that cannot travel in an HTTP header "
            "(CR, LF, another control character or non-ASCII); it is not used"
        )
        assert "X-Injected" not in str(caught.value.error)
        # The provider mends its ways: the next call gets a fresh, good token (the bad one was never cached).
        await s.auth.behave(access_token_suffix=None)
        good = await s.bearer_seen(s.alice)
        assert "\r" not in good and "\n" not in good
        assert not backend.smuggled()


@pytest.mark.parametrize("bad", [INJECTED, "\nX-Injected: smuggled", "\x00", "caf\u00e9"])
async def test_a_stored_token_that_cannot_be_a_header_value_is_never_written(tmp_path: Path, bad: str) -> None:
    """A token the vault already holds (stored before the check at receipt existed) meets the check where headers
    are written: nothing reaches the backend, and other callers and servers keep working."""
    async with setup(tmp_path) as (s, backend):
        keys = LocalKeyProvider.load(s.gw.data_dir)
        stored = TokenSet("stored-token-" + bad, obtained_at=time.time(), expires_in=3600)
        mark(stored.access_token)
        await VaultTokenCache(OAuthTokenStore(s.gw.db, keys)).set(f"2lo|g/analytics|client:{CC_CLIENT_ID}", stored)
        requests_before = len(backend.seen)
        with pytest.raises(MCPError) as caught:
            await s.bearer_seen(s.ci)
        assert caught.value.error.code == -32010
        assert caught.value.error.message == (
            "backend 'g/analytics': the value of header 'authorization' contains CR, LF, another control character "
            "or non-ASCII; the request was not sent"
        )
        assert "stored-token" not in str(caught.value.error)
        assert len(backend.seen) == requests_before and not backend.smuggled()  # not a byte reached the backend
        # Once the stored token has expired, the provider's next one serves every caller again.
        s.clock.offset = 7200
        assert "stored-token" not in await s.bearer_seen(s.alice)
        assert not backend.smuggled()

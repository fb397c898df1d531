"""A stdio server whose credential is each user's own OAuth token in its environment (`auth_data` oauth2 with
`token_env`): each user connects their account through the gateway's consent link against a real authorization
server, gets their own process holding their own token, never another's; a renewed token starts the process again;
the token never comes back to a caller, into the log or into the audit trail."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.lab_config import ALICE, BOB, PLATFORM, group, identities, remote
from tests.oauth.browser import connect
from tests.oauth_server import CODE_CLIENT_ID, AuthServer, authorization_server
from tests.security_support import OffsetClock, SecureGateway, secure_gateway
from tests.sensitive import mark
from tests.support import REPO, bind
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.errors import ConfigError
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

ENDPOINT = "/mcp-server/g/github/server"


def stdio_github(auth: AuthServer, **fields: Any) -> dict[str, Any]:
    server = remote("github", "unused", **fields)
    del server["url"]
    server.update(
        transport="stdio",
        command=sys.executable,
        args=["-m", "tests.stdio_token_reader"],
        cwd=str(REPO),
        token_env="GITHUB_TOKEN",
        auth_data={
            "type": "oauth2",
            "grant_type": "authorization_code",
            "authorization_url": auth.authorization_endpoint,
            "token_url": auth.token_endpoint,
            "issuer": auth.issuer,
            "client_id": CODE_CLIENT_ID,
            "client_secret": "tfy-secret://t:github:client_secret",
            "scopes": ["mcp:tools"],
        },
    )
    return server


@dataclass
class Setup:
    auth: AuthServer
    gw: SecureGateway
    clock: OffsetClock
    data: Path

    async def whoami(self, token: str) -> dict[str, Any]:
        async with self.gw.client(ENDPOINT, token) as client:
            result = await client.call_tool("whoami", {})
        seen: dict[str, Any] = json.loads(result.content[0].text)
        return seen

    async def connect(self, token: str, user: str) -> None:
        """`user` connects their account: the provider signs them in (as themselves there)."""
        await self.auth.behave(login_account=user)
        with pytest.raises(MCPError) as needed:
            await self.whoami(token)
        assert needed.value.code == -32042
        [elicitation] = needed.value.data["elicitations"]
        page = await connect(str(elicitation["url"]), token)
        assert page.status_code == 200 and "Connected" in page.text

    async def stored(self, user: str) -> str:
        stored = await OAuthTokenStore(self.gw.db, LocalKeyProvider.load(self.data)).get("g/github", f"user:{user}")
        assert stored is not None
        access = str(stored["access_token"])
        mark(access)
        return access


@asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    sock = bind()
    callback = f"http://127.0.0.1:{sock.getsockname()[1]}/oauth/callback"
    # A stdio server has no URL to name as the token's resource: the provider's default one applies.
    options = {"redirect_uris": (callback,), "access_token_ttl": 100, "default_resource": "https://github.example/"}
    async with authorization_server(**options) as auth:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "g.yaml").write_text(group("g", stdio_github(auth)))
        (config / "ids.yaml").write_text(identities({PLATFORM: [ALICE, BOB]}))
        secrets = {"tfy-secret://t:github:client_secret": auth.secret(CODE_CLIENT_ID)}
        clock = OffsetClock()
        data = tmp_path / "data"
        async with secure_gateway(config, data, secrets, clock=clock, sock=sock, list_deadline_seconds=30) as gw:
            yield Setup(auth, gw, clock, data)


async def test_each_user_gets_a_process_with_their_own_token(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        alice = await s.gw.token(PrincipalKind.USER, "alice@northwind.example")
        bob = await s.gw.token(PrincipalKind.USER, "bob@northwind.example")
        await s.connect(alice, ALICE)
        await s.connect(bob, BOB)
        a1, b1 = await s.whoami(alice), await s.whoami(bob)
        assert a1["sub"] == "alice@northwind.example" and b1["sub"] == "bob@northwind.example"
        assert a1["pid"] != b1["pid"]  # a process each
        assert await s.whoami(alice) == a1  # the same process, the same token
        alices_token = await s.stored("alice@northwind.example")
        # The token itself never comes back: the gateway removes it from what its process says.
        async with s.gw.client(ENDPOINT, alice) as client:
            said = (await client.call_tool("token", {})).content[0].text
        assert alices_token not in said and "REDACTED" in said
        # Expired, so renewed before use: her process starts again with her new token (and so does his).
        s.clock.offset += 150
        a2 = await s.whoami(alice)
        assert a2["sub"] == "alice@northwind.example" and a2["jti"] != a1["jti"] and a2["pid"] != a1["pid"]
        assert await s.stored("alice@northwind.example") != alices_token
        assert (await s.whoami(alice))["pid"] == a2["pid"]  # started again once, not at every call
        b2 = await s.whoami(bob)
        assert b2["sub"] == "bob@northwind.example" and b2["jti"] != b1["jti"]
        assert s.gw.leaks() == []


async def test_stdio_auth_data_needs_token_env_and_oauth2(tmp_path: Path) -> None:
    """`check` refuses a stdio server with auth_data but no token_env, header auth_data, or token_env alone."""
    for name, fields, said in (
        ("no-token-env", {"token_env": None}, "auth_data (oauth2) and token_env go together"),
        ("token-env-alone", {"auth_data": None}, "auth_data (oauth2) and token_env go together"),
        ("header", {"auth_data": {"type": "header", "headers": {"x": "y"}}}, "auth_data of type oauth2 only"),
        ("both", {"env": {"GITHUB_TOKEN": "x"}}, "token_env GITHUB_TOKEN: also set in env"),
    ):
        config = tmp_path / name
        config.mkdir()
        server = _static() | fields
        (config / "g.yaml").write_text(group("g", {k: v for k, v in server.items() if v is not None}))
        with pytest.raises(ConfigError) as refused:
            load_config_dir(config)
        assert said in str(refused.value), name


def _static() -> dict[str, Any]:
    """A stdio server entry with client-credentials auth_data (no authorization server is reached: `check` only)."""
    entry = remote("github", "unused")
    del entry["url"]
    entry.update(transport="stdio", command=sys.executable, token_env="GITHUB_TOKEN")
    entry["auth_data"] = {
        "type": "oauth2",
        "grant_type": "client_credentials",
        "token_url": "https://idp.example/token",
        "client_id": "c",
        "client_secret": "tfy-secret://t:github:client_secret",
    }
    return entry

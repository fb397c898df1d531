"""A gateway process killed while it stores a refreshed token pair: what the next process finds and does.

Real processes (`virtual-mcp serve`, killed with SIGKILL by tests/oauth/crash_child.py at the chosen point), a real
authorization server that rotates refresh tokens and revokes the grant on reuse, a real backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError

from tests.backends import Probe, build_lab, received
from tests.oauth.browser import connect
from tests.oauth.test_authorization_code import IDS, group_doc
from tests.oauth_server import CODE_CLIENT_ID, AuthServer, authorization_server
from tests.ports import free_ports
from tests.processes import gateway_process
from tests.sensitive import mark
from tests.store_mode import state_database
from tests.support import Served, serve
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.db import DB_FILE_NAME

TTL = 4  # seconds: the gateway's timer refreshes at 80%, 3.2 s after the token was issued


@dataclass
class Scene:
    auth: AuthServer
    backend: Served
    config: Path
    data: Path
    port: int
    alice: str
    probe: Probe

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def call(self) -> dict[str, Any]:
        transport = StreamableHttpTransport(f"{self.url}/mcp-server/g/github/server", auth=self.alice)
        async with Client(transport) as client:
            return await received(client, self.probe)

    @asynccontextmanager
    async def gateway(self, crash_at: str = "none", clock_offset: float = 0) -> AsyncIterator[Process]:
        args = ["--config", str(self.config), "--port", str(self.port), "--data-dir", str(self.data)]
        async with gateway_process(args, ("tests.oauth.crash_child", crash_at, str(clock_offset))) as process:
            yield process


def seen_token(answer: dict[str, Any]) -> str:
    token = str(answer["authorization"]).removeprefix("Bearer ")
    mark(token)
    return token


@asynccontextmanager
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    [port] = free_ports(1)
    callback = f"http://127.0.0.1:{port}/oauth/callback"
    async with (
        authorization_server(redirect_uris=(callback,), access_token_ttl=TTL) as auth,
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
        data = tmp_path / "data"
        keys = LocalKeyProvider.load(data, create=True)
        async with state_database(data) as db:
            secret = auth.secret(CODE_CLIENT_ID)
            mark(secret)
            await SecretStore(db, keys).set(SecretRef.parse("tfy-secret://t:github:client_secret"), secret)
            _, alice = await TokenStore(db).create(PrincipalKind.USER, "alice@northwind.example")
            mark(alice)
        yield Scene(auth, backend, config, data, port, alice, probe)


async def connect_and_wait_for_the_crash(s: Scene, point: str) -> str:
    """Alice connects through a gateway armed to die at `point`; her first call makes the token hot, the gateway's
    timer refreshes it at 80% of its lifetime, and the process kills itself while storing the new pair."""
    async with s.gateway(crash_at=point) as doomed:
        with pytest.raises(MCPError) as needed:
            await s.call()
        assert needed.value.code == -32042
        page = await connect(str(needed.value.data["elicitations"][0]["url"]), s.alice)
        assert page.status_code == 200 and "Connected" in page.text
        first = seen_token(await s.call())
        with anyio.fail_after(TTL * 5):
            await doomed.wait()
        assert doomed.returncode == -9  # SIGKILL, at the chosen point
    assert await s.auth.token_requests("refresh_token") == 1  # the provider answered: the old refresh token is spent
    if (s.data / DB_FILE_NAME).exists():  # the embedded store (on PostgreSQL, its own recovery applies)
        with sqlite3.connect(s.data / DB_FILE_NAME) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return first


@pytest.mark.parametrize("point", ["received", "in_transaction"])
async def test_killed_before_the_commit_the_next_process_never_reuses_the_spent_refresh_token(
    tmp_path: Path, point: str
) -> None:
    async with scene(tmp_path) as s:
        first = await connect_and_wait_for_the_crash(s, point)
        async with s.gateway(clock_offset=TTL):  # the next process, once the old access token has expired
            with pytest.raises(MCPError) as needed:
                await s.call()
            # The stored set was marked before its refresh token left, so this process knows the refresh died:
            # it asks alice to connect again rather than present a refresh token the provider has rotated away.
            assert needed.value.code == -32042
            assert "could not be renewed safely" in needed.value.message
            assert await s.auth.token_requests("refresh_token") == 1  # never reused
            # Connecting again works.
            page = await connect(str(needed.value.data["elicitations"][0]["url"]), s.alice)
            assert page.status_code == 200
            assert seen_token(await s.call()) != first


async def test_killed_after_the_commit_the_next_process_uses_the_new_pair(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        first = await connect_and_wait_for_the_crash(s, "committed")
        async with s.gateway(clock_offset=TTL):  # the next process, once the committed access token has expired
            # The committed refresh token is the live one: this call's refresh presents it, and the provider (which
            # would revoke the grant for a rotated-away one) answers with a new pair.
            second = seen_token(await s.call())
            assert second != first
            assert await s.auth.token_requests("refresh_token") == 2
            assert await s.auth.token_requests("authorization_code") == 1  # alice never had to connect again

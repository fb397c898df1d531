"""Two gateways (replicas) on one PostgreSQL database (a real server, tests/services.py), each with a data directory of
its own holding the same master key: a gateway token issued through one works on the other, its revocation is
refused by both at once, an identity revoked is refused by both within the revocation poll, the trail of both is
one, and what is sealed by one opens on the other."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.backends import build_lab
from tests.gateway.test_timing import ACCEPT, MODERN, group_doc
from tests.lab_config import ALICE, write_identities
from tests.processes import cli
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt, secure_gateway
from tests.services import Postgres, redis_server
from tests.support import LegacyOnly, serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.config.settings import Limits
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.keys import KEY_FILE_NAME
from virtual_mcp.vault.revocations import RevocationStore

ENDPOINT = "/mcp-server/lab/tools/server"
# The test asks as fast as it can until a revocation is seen: no request limit in its way.
UNLIMITED = Limits(requests_per_second_per_principal=100_000, request_burst_per_principal=100_000)


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, backend_url: str, database_url: str, **settings: Any
) -> AsyncIterator[tuple[SecureGateway, SecureGateway]]:
    """Two gateways on one database, each with a data directory of its own holding the fleet's one master key."""
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "lab.yaml").write_text(group_doc(url=backend_url))
    write_identities(config)
    one, two = tmp_path / "one", tmp_path / "two"
    options = {"database_url": database_url, "limits": UNLIMITED, **settings}
    async with secure_gateway(config, one, **options) as a:
        two.mkdir(mode=0o700)
        shutil.copy2(one / KEY_FILE_NAME, two / KEY_FILE_NAME)  # one master key for the fleet
        async with secure_gateway(config, two, **options) as b:
            yield a, b


async def test_two_replicas_share_tokens_revocations_and_the_trail(tmp_path: Path, postgres: Postgres) -> None:
    url = await fresh_postgres(postgres)
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        fast = {"revocation_poll_seconds": 0.2, "redis_url": None}  # the database poll alone
        async with two_replicas(tmp_path, backend.url, url, **fast) as (a, b):
            token = await a.token(PrincipalKind.USER, ALICE)
            for gw in (a, b):
                async with gw.client(ENDPOINT, token) as client:
                    assert (await client.call_tool("echo", {"text": "hi"})).data == "hi"
            # The token revoked through one (its store; no event): refused by both within their revocation poll (a
            # token verified a moment ago is answered from memory for at most that long).
            [info] = [t for t in await a.tokens.list() if t.name == ALICE]
            assert await a.tokens.revoke(info.id)
            async with httpx2.AsyncClient(timeout=10) as http:
                for gw in (a, b):
                    with anyio.fail_after(2):
                        while (status := await _call(http, gw.url, token)) == 200:
                            pass
                    assert status == 401
            # An identity revoked (as `virtual-mcp revoke --user` records it, through either replica): both
            # refuse the IdP JWT it signed in with before, within their revocation poll.
            jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
            async with httpx2.AsyncClient(timeout=10) as http:
                assert {await _call(http, gw.url, jwt) for gw in (a, b)} == {200}
                await RevocationStore(a.db).add(f"user:{ALICE}", time.time())
                for gw in (a, b):
                    with anyio.fail_after(5):  # each replica's revocation poll (0.2 s here) finds it
                        while (status := await _call(http, gw.url, jwt)) == 200:
                            pass
                    assert status == 401
            # One trail: each replica's calls, whichever is asked.
            await b.audit(user=ALICE)  # (each replica's pending records written)
            seen_by_a = await a.audit(user=ALICE, limit=1000)
            assert seen_by_a == await b.audit(user=ALICE, limit=1000)
            allowed = [e for e in seen_by_a if e.method == "tools/call" and e.outcome == "allowed"]
            assert len(allowed) >= 3  # the calls on a, on b, and the fresh token's


async def _call(http: httpx2.AsyncClient, url: str, token: str) -> int:
    """The HTTP status of one 2026-07-28 tools/call with `token`."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "still?"}, "_meta": meta},
    }
    headers = {
        "accept": ACCEPT,
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    return (await http.post(f"{url}{ENDPOINT}", content=json.dumps(body), headers=headers)).status_code


# With Redis (a server of the test's own, so that no other test's gateway hears its channel).


async def test_a_revoked_user_is_refused_by_every_replica_within_a_second_of_the_command(
    tmp_path: Path, postgres: Postgres
) -> None:
    """`virtual-mcp revoke --user` beside two replicas whose database poll is an hour: only the command's event on
    Redis can explain their refusing the user's IdP JWT within a second."""
    url = await fresh_postgres(postgres)
    with redis_server() as redis:
        async with (
            serve(build_lab().http_app(path="/mcp")) as backend,
            two_replicas(tmp_path, backend.url, url, revocation_poll_seconds=3600, redis_url=redis.url) as (a, b),
        ):
            for gw in (a, b):
                await gw.runtime.fleet_subscribed()
            jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
            async with httpx2.AsyncClient(timeout=10) as http:
                assert {await _call(http, gw.url, jwt) for gw in (a, b)} == {200}
                state = ["--data-dir", str(a.data_dir), "--database-url", url, "--redis-url", redis.url]
                code, out, err = await cli("revoke", "--user", ALICE, *state)
                assert code == 0, err
                assert "told at once" in out
                for gw in (a, b):
                    with anyio.fail_after(1):
                        while (status := await _call(http, gw.url, jwt)) == 200:
                            pass
                    assert status == 401


async def test_a_backends_list_change_reaches_the_callers_of_every_replica(tmp_path: Path, postgres: Postgres) -> None:
    """The backend tells replica A (on A's own session with it) that it grew a tool; a caller of replica B hears it
    too, and B lists the new tool."""
    url = await fresh_postgres(postgres)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changed.set()

    with redis_server() as redis:
        async with (
            serve(LegacyOnly(build_lab().http_app(path="/mcp"))) as backend,
            two_replicas(tmp_path, backend.url, url, redis_url=redis.url) as (a, b),
        ):
            await b.runtime.fleet_subscribed()
            token = await a.token(PrincipalKind.USER, ALICE)
            transport = StreamableHttpTransport(f"{b.url}{ENDPOINT}", auth=token)
            async with Client(transport, mode="legacy", message_handler=on_message) as on_b:
                assert "late" not in {t.name for t in await on_b.list_tools()}
                async with a.client(ENDPOINT, token) as on_a:
                    assert (await on_a.call_tool("grow", {"name": "late"})).data == "added late"
                with anyio.fail_after(10):
                    await changed.wait()
                assert "late" in {t.name for t in await on_b.list_tools()}


async def test_a_callers_request_rate_is_counted_over_the_fleet(tmp_path: Path, postgres: Postgres) -> None:
    url = await fresh_postgres(postgres)
    four = Limits(requests_per_second_per_principal=0.001, request_burst_per_principal=4)
    with redis_server() as redis:
        async with (
            serve(build_lab().http_app(path="/mcp")) as backend,
            two_replicas(tmp_path, backend.url, url, redis_url=redis.url, limits=four) as (a, b),
        ):
            token = await a.token(PrincipalKind.USER, ALICE)
            async with httpx2.AsyncClient(timeout=10) as http:
                statuses = [await _call(http, (a, b)[i % 2].url, token) for i in range(6)]
            assert statuses == [200] * 4 + [429] * 2  # four in all, not four per replica


async def test_without_redis_replicas_stay_ready_say_so_and_still_see_revocations(
    tmp_path: Path, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    url = await fresh_postgres(postgres)
    with redis_server() as redis:
        async with (
            serve(build_lab().http_app(path="/mcp")) as backend,
            two_replicas(tmp_path, backend.url, url, redis_url=redis.url, revocation_poll_seconds=0.2) as (a, b),
            httpx2.AsyncClient(timeout=10) as http,
        ):
            ready = (await http.get(f"{a.url}/readyz")).json()
            assert ready["status"] == "ready" and ready["checks"]["redis"] == "ok"
            redis.process.terminate()
            await anyio.to_thread.run_sync(redis.process.wait)
            token = await a.token(PrincipalKind.USER, ALICE)
            jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
            for gw in (a, b):  # served as before, each replica counting requests alone
                assert await _call(http, gw.url, token) == 200
                answer = await http.get(f"{gw.url}/readyz")
                assert answer.status_code == 200, answer.text  # still in the load balancer
                assert answer.json()["status"] == "degraded"
                assert answer.json()["checks"]["redis"].startswith("degraded: Redis unreachable")
                exposition = gw.metrics.exposition().decode()
                assert 'vmcp_fleet_degraded{part="rate_limit"} 1.0' in exposition
            # A revocation still reaches both, by their database poll.
            await RevocationStore(a.db).add(f"user:{ALICE}", time.time())
            for gw in (a, b):
                with anyio.fail_after(5):
                    while (status := await _call(http, gw.url, jwt)) == 200:
                        pass
                assert status == 401
    assert "Redis unreachable for rate_limit" in caplog.text

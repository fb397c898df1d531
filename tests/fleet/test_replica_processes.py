"""Three `virtual-mcp serve` processes on one PostgreSQL database and one Redis (real servers), behind a round-robin
load balancer, as an operator runs a fleet (docs/deployment.md): a token made through any of them works on all, its
revocation (and a user's) is refused by every replica within a second of the command, and `virtual-mcp audit` shows
the calls of every replica.

The load balancer (`RoundRobin`) passes each new TCP connection to the next replica, skipping one that refuses; the
clients here open a connection per request, so consecutive requests land on different replicas.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from anyio.abc import SocketStream, TaskGroup

from tests.backends import build_lab
from tests.gateway.test_timing import group_doc
from tests.lab_config import ALICE, BOB, write_identities
from tests.ports import free_ports
from tests.processes import MODERN_META, cli, gateway_process
from tests.security_support import GATEWAY_AUDIENCE, GATEWAY_DOC, HMAC_KEY, idp_jwt, store_secrets
from tests.sensitive import mark
from tests.services import Postgres, redis_server
from tests.support import serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.fleet.connection import REDIS_URL_ENV
from virtual_mcp.vault.engines import DATABASE_URL_ENV
from virtual_mcp.vault.keys import KEY_FILE_NAME

ENDPOINT = "/mcp-server/lab/tools/server"
REPLICAS = 3


@dataclass
class RoundRobin:
    """A TCP load balancer on loopback: each connection to the next replica; one that refuses is skipped."""

    ports: list[int]
    connections: Counter[int] = field(default_factory=Counter)
    _next: int = 0
    port: int = 0

    async def run(self, tg: TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
        tg.start_soon(listener.serve, self._pass_on, tg)

    async def _pass_on(self, client: SocketStream) -> None:
        async with client:
            for _ in range(len(self.ports)):
                port = self.ports[self._next % len(self.ports)]
                self._next += 1
                try:
                    upstream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    continue
                self.connections[port] += 1
                async with upstream, anyio.create_task_group() as tg:
                    tg.start_soon(_pipe, client, upstream, tg)
                    await _pipe(upstream, client, tg)
                return


async def _pipe(source: SocketStream, sink: SocketStream, tg: TaskGroup) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
        await sink.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        tg.cancel_scope.cancel()


@dataclass
class Fleet:
    url: str  # the load balancer's
    replicas: list[str]  # each replica's own URL
    balancer: RoundRobin
    state: list[str]  # a CLI command's state arguments: the data directory (master key), database, Redis

    async def cli(self, *args: str) -> str:
        code, out, err = await cli(*args, *self.state)
        assert code == 0, err
        return out

    async def call(self, http: httpx.AsyncClient, bearer: str, url: str | None = None) -> int:
        """One sessionless 2026-07-28 tools/call of `echo`: its HTTP status."""
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": MODERN_META},
        }
        headers = {
            "authorization": f"Bearer {bearer}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": "echo",
        }
        answer = await http.post(f"{url or self.url}{ENDPOINT}", json=body, headers=headers)
        return answer.status_code


def one_connection_per_request() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@asynccontextmanager
async def fleet(tmp_path: Path, postgres: Postgres) -> AsyncIterator[Fleet]:
    url = await fresh_postgres(postgres)
    with redis_server() as redis:
        async with AsyncExitStack() as stack:
            backend = await stack.enter_async_context(serve(build_lab().http_app(path="/mcp")))
            config = tmp_path / "servers.d"
            write_identities(config)
            (config / "lab.yaml").write_text(group_doc(url=backend.url))
            (config / "gateway.yaml").write_text(GATEWAY_DOC)
            data = [tmp_path / f"replica-{i}" for i in range(REPLICAS)]
            await store_secrets(data[0], {"tfy-secret://gw:jwt:hmac": HMAC_KEY}, url)
            for other in data[1:]:
                other.mkdir(mode=0o700)
                shutil.copy2(data[0] / KEY_FILE_NAME, other / KEY_FILE_NAME)  # the fleet's one master key
            env = {DATABASE_URL_ENV: url, REDIS_URL_ENV: redis.url}
            ports = free_ports(REPLICAS)
            for port, directory in zip(ports, data, strict=True):
                args = ["--config", str(config), "--data-dir", str(directory), "--port", str(port)]
                await stack.enter_async_context(gateway_process(args, env=env))
            tg = await stack.enter_async_context(anyio.create_task_group())
            balancer = RoundRobin(ports)
            await balancer.run(tg)
            state = ["--data-dir", str(data[0]), "--database-url", url, "--redis-url", redis.url]
            yield Fleet(f"http://127.0.0.1:{balancer.port}", [f"http://127.0.0.1:{p}" for p in ports], balancer, state)
            tg.cancel_scope.cancel()


async def refused_everywhere(fleet: Fleet, http: httpx.AsyncClient, bearer: str) -> None:
    """Within a second of now: every replica refuses `bearer` (asked through the load balancer, in turn, until a
    full round refuses it; then each replica directly)."""
    with anyio.fail_after(1.0):
        refusals = 0
        while refusals < REPLICAS:
            refusals = refusals + 1 if await fleet.call(http, bearer) == 401 else 0
    for replica in fleet.replicas:
        assert await fleet.call(http, bearer, replica) == 401


async def test_a_token_works_on_every_replica_and_its_revocation_reaches_all_within_a_second(
    tmp_path: Path, postgres: Postgres
) -> None:
    async with fleet(tmp_path, postgres) as f, one_connection_per_request() as http:
        token = (await f.cli("token", "create", "--user", ALICE)).strip()
        mark(token)
        assert [await f.call(http, token) for _ in range(2 * REPLICAS)] == [200] * 2 * REPLICAS
        assert sorted(f.balancer.connections.values()) == [2] * REPLICAS  # every replica served it
        jwt = idp_jwt(BOB, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
        assert {await f.call(http, jwt) for _ in range(REPLICAS)} == {200}

        token_id = token.split("_")[1]
        assert "told at once" in await f.cli("token", "revoke", token_id)
        await refused_everywhere(f, http, token)

        assert "told at once" in await f.cli("revoke", "--user", BOB)
        await refused_everywhere(f, http, jwt)


async def test_the_audit_shows_the_calls_of_every_replica(tmp_path: Path, postgres: Postgres) -> None:
    async with fleet(tmp_path, postgres) as f, one_connection_per_request() as http:
        token = (await f.cli("token", "create", "--user", ALICE)).strip()
        mark(token)
        calls = 4 * REPLICAS
        assert [await f.call(http, token) for _ in range(calls)] == [200] * calls
        assert sorted(f.balancer.connections.values()) == [4] * REPLICAS
        with anyio.fail_after(10):  # each replica's audit writer lingers a moment for company before it writes
            while True:
                out = await f.cli("audit", "--user", ALICE, "--format", "json", "--limit", "1000")
                listed = [json.loads(line) for line in out.splitlines()]
                allowed = [e for e in listed if e["method"] == "tools/call" and e["outcome"] == "allowed"]
                if len(allowed) == calls:
                    break
        assert len({e["request_id"] for e in allowed}) == calls

"""Three `virtual-mcp serve` processes on one PostgreSQL database and one Redis (real servers), behind a round-robin
load balancer, as an operator runs a fleet (docs/deployment.md): a token made through any of them works on all, its
revocation (and a user's) is refused by every replica within a second of the command, and `virtual-mcp audit` shows
the calls of every replica.

The load balancer (`RoundRobin`) passes each new TCP connection to the next replica, skipping one that refuses; the
clients here open a connection per request, so consecutive requests land on different replicas.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from anyio.abc import Process, SocketStream, TaskGroup
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult

from tests.backends import Probe, build_lab
from tests.fleet.test_sessions import a_session_over_replicas
from tests.gateway.test_timing import group_doc
from tests.lab_config import ALICE, BOB, write_identities
from tests.oauth.browser import Browser, connect
from tests.oauth.test_authorization_code import IDS
from tests.oauth.test_authorization_code import group_doc as code_group_doc
from tests.oauth_server import CODE_CLIENT_ID, AuthServer, authorization_server
from tests.ports import free_ports
from tests.processes import MODERN_META, cli, gateway_process
from tests.security_support import GATEWAY_AUDIENCE, GATEWAY_DOC, HMAC_KEY, idp_jwt, store_secrets
from tests.sensitive import mark
from tests.services import Postgres, redis_contents, redis_server
from tests.stateful_backend import Seen, stateful_app
from tests.support import serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.fleet.connection import REDIS_URL_ENV
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.engines import DATABASE_URL_ENV, open_database
from virtual_mcp.vault.keys import KEY_FILE_NAME
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

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
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
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
    processes: list[Process]
    clock: Path  # write seconds here to move every replica's token clock forward
    probe: Probe  # what the backend received
    database_url: str
    starts: list[tuple[list[str], tuple[str, ...]]]  # each replica's `serve` arguments and child (to start it again)
    env: dict[str, str]

    async def cli(self, *args: str) -> str:
        code, out, err = await cli(*args, *self.state)
        assert code == 0, err
        return out

    async def call(
        self,
        http: httpx.AsyncClient,
        bearer: str,
        url: str | None = None,
        endpoint: str = ENDPOINT,
        tool: tuple[str, dict[str, str]] = ("echo", {"text": "hi"}),
    ) -> int:
        """One sessionless 2026-07-28 tools/call (of `echo` by default): its HTTP status."""
        return (await self.answer(http, bearer, url, endpoint, tool)).status_code

    async def answer(
        self,
        http: httpx.AsyncClient,
        bearer: str,
        url: str | None = None,
        endpoint: str = ENDPOINT,
        tool: tuple[str, dict[str, str]] = ("echo", {"text": "hi"}),
    ) -> httpx.Response:
        """One sessionless 2026-07-28 tools/call (of `echo` by default): its answer."""
        name, arguments = tool
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": MODERN_META},
        }
        headers = {
            "authorization": f"Bearer {bearer}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": name,
        }
        return await http.post(f"{url or self.url}{endpoint}", json=body, headers=headers)

    async def upstream_bearer(self, http: httpx.AsyncClient, bearer: str, endpoint: str) -> str:
        """The credential the backend received for one call through the load balancer."""
        tag = uuid.uuid4().hex
        assert await self.call(http, bearer, endpoint=endpoint, tool=("headers", {"tag": tag})) == 200
        return self.probe.tagged.pop(tag)["authorization"].removeprefix("Bearer ")


def one_connection_per_request() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    postgres: Postgres,
    documents: Callable[[str], dict[str, str]] | None = None,
    secrets: dict[str, str] | None = None,
    ports: list[int] | None = None,
    extra: Sequence[str] = (),
    balancer_port: int = 0,
) -> AsyncIterator[Fleet]:
    """Three replicas on `ports` (free ones by default) over a fresh database and a Redis of their own, with the
    configuration `documents(backend_url)` (file name -> text; default: the lab's tools server) and `secrets` stored,
    each replica a `clock_child` whose token clock the file `Fleet.clock` moves; then the load balancer in front."""
    url = await fresh_postgres(postgres)
    with redis_server() as redis:
        async with AsyncExitStack() as stack:
            backend = await stack.enter_async_context(serve(build_lab(probe := Probe()).http_app(path="/mcp")))
            config = tmp_path / "servers.d"
            write_identities(config)
            docs = documents(backend.url) if documents is not None else {"lab.yaml": group_doc(url=backend.url)}
            for name, text in {"gateway.yaml": GATEWAY_DOC, **docs}.items():
                (config / name).write_text(text)
            data = [tmp_path / f"replica-{i}" for i in range(REPLICAS)]
            await store_secrets(data[0], {"tfy-secret://gw:jwt:hmac": HMAC_KEY, **(secrets or {})}, url)
            for other in data[1:]:
                other.mkdir(mode=0o700)
                shutil.copy2(data[0] / KEY_FILE_NAME, other / KEY_FILE_NAME)  # the fleet's one master key
            env = {DATABASE_URL_ENV: url, REDIS_URL_ENV: redis.url}
            ports = ports or free_ports(REPLICAS)
            clock = tmp_path / "clock"
            processes = []
            starts = []
            for port, directory in zip(ports, data, strict=True):
                args = ["--config", str(config), "--data-dir", str(directory), "--port", str(port), *extra]
                child = ("tests.fleet.clock_child", str(clock))
                starts.append((args, child))
                processes.append(await stack.enter_async_context(gateway_process(args, child, env=env)))
            tg = await stack.enter_async_context(anyio.create_task_group())
            balancer = RoundRobin(ports, port=balancer_port)
            await balancer.run(tg)
            state = ["--data-dir", str(data[0]), "--database-url", url, "--redis-url", redis.url]
            replicas = [f"http://127.0.0.1:{p}" for p in ports]
            yield Fleet(
                f"http://127.0.0.1:{balancer.port}",
                replicas,
                balancer,
                state,
                processes,
                clock,
                probe,
                url,
                starts,
                env,
            )
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


GITHUB = "/mcp-server/g/github/server"


def per_user_github(auth: AuthServer) -> tuple[Callable[[str], dict[str, str]], dict[str, str]]:
    """The fleet's configuration of g/github, a per-user OAuth server of `auth`, and the secret it needs."""

    def documents(backend: str) -> dict[str, str]:
        doc = code_group_doc(
            backend=backend,
            authorize=auth.authorization_endpoint,
            token=auth.token_endpoint,
            revoke=auth.revocation_endpoint,
            issuer=auth.issuer,
            client_id=CODE_CLIENT_ID,
        )
        return {"g.yaml": doc, "identities.yaml": IDS}

    return documents, {"tfy-secret://t:github:client_secret": auth.secret(CODE_CLIENT_ID)}


async def stored_set(f: Fleet, data_dir: Path) -> dict[str, Any]:
    """Alice's token set for g/github as the fleet's database holds it, opened with the fleet's master key."""
    async with open_database(data_dir, f.database_url) as db:
        record = await OAuthTokenStore(db, LocalKeyProvider.load(data_dir, create=False)).get(
            "g/github", f"user:{ALICE}"
        )
    assert record is not None
    return record


async def test_one_token_request_for_fifty_callers_even_when_the_lock_holder_is_paused_past_its_lease(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Alice's per-user token is past 80% of its lifetime when fifty of her calls arrive over the three replicas:
    all are served (the current token is still valid) and one replica takes the fleet's lock and sends the refresh.
    That replica is stopped (SIGSTOP) while the provider takes its time; its two-second lease runs out and another
    replica takes the lock, finds the refresh under way (its write-ahead mark) and sends nothing. Resumed, the
    stopped replica stores the provider's answer. The provider saw exactly one token request."""
    ports = free_ports(REPLICAS)
    callback = f"http://127.0.0.1:{ports[0]}/oauth/callback"  # alice connects through the first replica
    async with authorization_server(redirect_uris=(callback,), access_token_ttl=100) as auth:
        documents, secrets = per_user_github(auth)
        lease = ["--refresh-lock-lease", "2"]
        async with (
            fleet(tmp_path, postgres, documents, secrets, ports, lease) as f,
            one_connection_per_request() as http,
        ):
            alice = (await f.cli("token", "create", "--user", ALICE)).strip()
            mark(alice)
            with pytest.raises(MCPError) as needed:
                async with Client(StreamableHttpTransport(f"{f.replicas[0]}{GITHUB}", auth=alice)) as client:
                    await client.call_tool("echo", {"text": "hi"})
            page = await connect(str(needed.value.data["elicitations"][0]["url"]), alice)
            assert page.status_code == 200 and "Connected" in page.text
            first = await f.upstream_bearer(http, alice, GITHUB)
            mark(first)
            await auth.reset()
            await auth.behave(token_delay_ms=6000)
            f.clock.write_text("85")  # 85 s of the token's 100: past 80%, still valid

            statuses: list[int] = []

            async def call() -> None:
                statuses.append(await f.call(http, alice, endpoint=GITHUB))

            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(call)
            assert statuses == [200] * 50  # served the current token meanwhile

            # The holder: the replica whose process its write-ahead mark names, once its refresh reached the provider.
            data_dir = Path(f.state[f.state.index("--data-dir") + 1])
            with anyio.fail_after(10):
                while await auth.token_requests("refresh_token") == 0:
                    pass
            marked = (await stored_set(f, data_dir))["refreshing_by"]
            assert marked is not None
            pid = int(marked.split(":")[1])
            assert pid in [p.pid for p in f.processes]
            os.kill(pid, signal.SIGSTOP)
            try:
                # Its lease runs out; another replica takes the lock, finds the holder's mark and drops the refresh
                # token it marked rather than send it again (the provider may have rotated it already).
                with anyio.fail_after(15):
                    while not (await stored_set(f, data_dir)).get("refresh_lost"):
                        pass
            finally:
                os.kill(pid, signal.SIGCONT)
            # Resumed, the holder reads the provider's answer and stores it over the set it refreshed.
            with anyio.fail_after(15):
                while (stored := await stored_set(f, data_dir))["access_token"] == first:
                    pass
            assert stored["refresh_token"] and not stored["refresh_lost"] and stored["refreshing_by"] is None
            assert await auth.token_requests() == 1  # one refresh, for fifty callers on three replicas
            assert [await f.call(http, alice, endpoint=GITHUB) for _ in range(REPLICAS)] == [200] * REPLICAS


async def test_a_replica_killed_under_load_loses_only_its_calls_in_flight(tmp_path: Path, postgres: Postgres) -> None:
    """Eight callers make 320 calls through the load balancer; once a third are answered, one replica is killed
    (SIGKILL: no cleanup). Only the calls it had in flight fail (at most one per caller); every other call is
    answered by the two left, and the fleet goes on serving, the killed replica's state intact in the database.
    Started again on its data directory, the killed replica writes the audit records of the calls it had answered
    and not yet written (its journal): the trail holds every answered call."""
    callers, each = 8, 40
    async with fleet(tmp_path, postgres) as f, one_connection_per_request() as http:
        token = (await f.cli("token", "create", "--user", ALICE)).strip()
        mark(token)
        outcomes: list[int | str] = []
        answered: list[str] = []  # the request ids of the calls answered
        a_third = anyio.Event()

        async def caller() -> None:
            for _ in range(each):
                try:
                    response = await f.answer(http, token)
                    outcome: int | str = response.status_code
                    if outcome == 200:
                        answered.append(response.headers["x-request-id"])
                except httpx.HTTPError as exc:  # the connection the killed replica held
                    outcome = type(exc).__name__
                outcomes.append(outcome)
                if len(outcomes) >= callers * each // 3:
                    a_third.set()

        victim = f.processes[1]
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
            with anyio.fail_after(60):
                await a_third.wait()
            os.kill(victim.pid, signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
        failed = [o for o in outcomes if o != 200]
        assert len(outcomes) == callers * each
        assert len(failed) <= callers, failed  # at most the one call each caller had in flight there
        assert all(isinstance(o, str) for o in failed), failed  # cut connections, never a wrong answer
        assert [await f.call(http, token) for _ in range(4)] == [200] * 4  # the two left serve on
        for replica in (f.replicas[0], f.replicas[2]):
            assert await f.call(http, token, replica) == 200

        args, child = f.starts[1]
        async with gateway_process(args, child, env=f.env):  # its journal is written before it serves
            out = await f.cli("audit", "--user", ALICE, "--format", "json", "--limit", "100000")
        recorded = {json.loads(line)["request_id"] for line in out.splitlines()}
        assert not set(answered) - recorded, f"{len(set(answered) - recorded)} answered calls not in the trail"


async def test_a_2025_11_25_session_goes_on_whichever_replica_each_request_lands_on(
    tmp_path: Path, postgres: Postgres
) -> None:
    """fastmcp's client in the handshake era, one connection per HTTP request, so that consecutive requests land on
    different replicas: the handshake, lists, calls, progress, log messages at the level it chose, and a call it
    abandons (its `notifications/cancelled` reaches the replica serving the call, and the backend is told)."""

    def no_keepalive(**options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0), **options)

    async with fleet(tmp_path, postgres) as f:
        token = (await f.cli("token", "create", "--user", ALICE)).strip()
        mark(token)
        transport = StreamableHttpTransport(f"{f.url}{ENDPOINT}", auth=token, httpx_client_factory=no_keepalive)
        await a_session_over_replicas(transport, f.probe, rounds=REPLICAS)
        assert min(f.balancer.connections.values()) >= 5, f.balancer.connections  # each replica served a share


async def test_a_stateful_backend_sees_one_session_of_a_principal_whichever_replica_each_call_lands_on(
    tmp_path: Path, postgres: Postgres
) -> None:
    """A 2025-11-25 backend that keeps state per session, behind the three replicas: each call of the principal's
    lands on the next replica, and every one of them uses the same backend session (what one call stored, the next
    reads); stopping the fleet ends that session at the backend once."""

    def no_keepalive(**options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0), **options)

    seen = Seen()
    async with serve(stateful_app(seen)) as stateful:
        async with fleet(tmp_path, postgres, lambda _: {"lab.yaml": group_doc(url=stateful.url)}) as f:
            token = (await f.cli("token", "create", "--user", ALICE)).strip()
            mark(token)
            transport = StreamableHttpTransport(f"{f.url}{ENDPOINT}", auth=token, httpx_client_factory=no_keepalive)
            async with Client(transport, mode="legacy") as client:
                assert (await client.call_tool("remember", {"value": "kept"})).data == "remembered"
                sessions = set()
                for _ in range(2 * REPLICAS):
                    assert (await client.call_tool("recall", {})).data == "kept"
                    sessions.add((await client.call_tool("session", {})).data)
                # What the fleet shares in Redis meanwhile (the client's session, the backend's, their holds) names
                # no one and holds no credential or session id readable.
                held = await redis_contents(f.env[REDIS_URL_ENV])
                assert b"vmcp:upstream:" in held and b"vmcp:session:" in held
                for plain in (token, *sessions, ALICE, "alice"):
                    assert plain.encode() not in held, plain
            assert len(sessions) == 1, sessions
            assert min(f.balancer.connections.values()) >= 5, f.balancer.connections  # each replica served a share
        assert seen.deleted.count(sessions.pop()) == 1


async def test_a_users_consent_completes_whichever_replica_each_step_lands_on(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Per-user OAuth in a fleet. Bob's browser opens his link through the load balancer, one connection per request:
    the link's page, the signed-in form and the provider's callback each land on another replica than the step
    before, and he is connected on every replica. Alice's call waits on replica 0 (she opens the link it gave her, on
    replica 1, from her client's URL elicitation): the callback completes on replica 1, and her call on replica 0
    goes on with her own token."""
    ports = free_ports(REPLICAS + 1)
    replica_ports, balancer_port = ports[:REPLICAS], ports[REPLICAS]
    callbacks = tuple(f"http://127.0.0.1:{port}/oauth/callback" for port in (balancer_port, replica_ports[1]))
    async with authorization_server(redirect_uris=callbacks) as auth:
        documents, secrets = per_user_github(auth)
        async with (
            fleet(tmp_path, postgres, documents, secrets, replica_ports, balancer_port=balancer_port) as f,
            one_connection_per_request() as http,
        ):
            bob = (await f.cli("token", "create", "--user", BOB)).strip()
            mark(bob)
            with pytest.raises(MCPError) as needed:
                async with Client(StreamableHttpTransport(f"{f.url}{GITHUB}", auth=bob)) as client:
                    await client.call_tool("echo", {"text": "hi"})
            link = str(needed.value.data["elicitations"][0]["url"])
            assert link.startswith(f"{f.url}/oauth/start?ticket=")
            before = Counter(f.balancer.connections)
            async with Browser(keepalive=False) as browser:
                page = await browser.connect(link, bob)
            assert page.status_code == 200 and "Connected" in page.text, page.text
            assert len(f.balancer.connections - before) >= 2  # its steps reached more than one replica
            for replica in f.replicas:
                assert await f.call(http, bob, replica, endpoint=GITHUB) == 200

            alice = (await f.cli("token", "create", "--user", ALICE)).strip()
            mark(alice)

            async def opens_the_link(message: str, response_type: Any, params: Any, context: Any) -> Any:
                elsewhere = params.url.replace(f.replicas[0], f.replicas[1])
                assert elsewhere != params.url
                page = await connect(elsewhere, alice)
                assert page.status_code == 200 and "Connected" in page.text
                return ElicitResult(action="accept")

            transport = StreamableHttpTransport(f"{f.replicas[0]}{GITHUB}", auth=alice)
            async with Client(transport, mode="legacy", elicitation_handler=opens_the_link) as client:
                with anyio.fail_after(30):
                    assert (await client.call_tool("echo", {"text": "waited"})).data == "waited"

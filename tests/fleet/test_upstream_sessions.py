"""A principal's 2025-11-25 backend session is one for the whole fleet (real PostgreSQL, Redis and backends, two
replicas in this process, each test with a Redis of its own):

- what a call through one replica stored in the backend session is there for a call through the other;
- it is ended at the backend only when the last replica holding it lets it go;
- a session the backend forgot is opened again once for the fleet, not once per replica;
- the session's GET stream is held by one replica (the backend refuses a second), and what comes on it reaches the
  subscriber whose subscription was made on the other replica, once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from fastmcp import Context, FastMCP
from redis.asyncio import Redis as RedisClient

from tests.fleet.test_sessions import UpdateStream, replicas, touch, watched_replicas
from tests.gateway.test_shared_state import ENDPOINT
from tests.gateway.test_timing import LEGACY, rpc
from tests.lab_config import ALICE
from tests.security_support import SecureGateway
from tests.services import Postgres, Redis, redis_server
from tests.stateful_backend import Seen, stateful_app
from tests.support import LegacyOnly, Served, serve
from virtual_mcp.fleet.sealing import Sealer
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.fleet.upstream import Heard, UpstreamFleet
from virtual_mcp.types import PrincipalKind, ServerRef
from virtual_mcp.upstream.session import UpstreamSession
from virtual_mcp.upstream.shared import Handshake

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def stateful(
    tmp_path: Path, postgres: Postgres, redis: Redis
) -> AsyncIterator[tuple[Seen, Served, SecureGateway, SecureGateway, str]]:
    """A backend that keeps state per session, two replicas in front of it, and alice's token."""
    seen = Seen()
    async with serve(stateful_app(seen)) as backend, replicas(tmp_path, postgres, backend, redis.url) as (a, b):
        yield seen, backend, a, b, await a.token(PrincipalKind.USER, ALICE)


async def forgotten(http: httpx2.AsyncClient, backend: Served, a: SecureGateway, b: SecureGateway, alice: str) -> str:
    """Both replicas hold alice's session; the backend forgets it (it restarted, or expired it); b finds out on its
    next request and opens the fleet's again: that one's id (a has not found out yet)."""
    first = await call(a, alice, "session")
    assert await call(b, alice, "session") == first
    headers = {"mcp-session-id": first, "mcp-protocol-version": LEGACY}
    assert (await http.delete(f"{backend.url}/mcp", headers=headers)).status_code == 200
    second = await call(b, alice, "session")
    assert second != first
    return second


async def call(gw: SecureGateway, token: str, tool: str, **arguments: Any) -> str:
    async with gw.client(ENDPOINT, token) as client:
        return str((await client.call_tool(tool, arguments)).data)


async def holders(redis_url: str) -> list[int]:
    """How many replicas hold each backend session the fleet shares."""
    async with RedisClient.from_url(redis_url) as redis:
        keys = [key async for key in redis.scan_iter("vmcp:upstream:*:holders")]
        return [int(await redis.zcard(key)) for key in keys]


async def test_a_principals_backend_session_is_the_same_on_every_replica_and_ended_by_the_last(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    async with stateful(tmp_path, postgres, own_redis) as (seen, _backend, a, b, alice):
        assert await call(a, alice, "remember", value="kept") == "remembered"
        session = await call(a, alice, "session")
        # Through the other replica: the same backend session, with what was stored in it.
        assert await call(b, alice, "recall") == "kept"
        assert await call(b, alice, "session") == session

        # Replica a lets its sessions go: b still holds alice's, which is not ended at the backend.
        assert await a.runtime.pool.end_idle(0) >= 1
        assert await holders(own_redis.url) == [1]  # held by b
        assert session not in seen.deleted
        assert await call(b, alice, "recall") == "kept"
        # The last replica lets it go: now it is ended.
        assert await b.runtime.pool.end_idle(0) >= 1
        assert seen.deleted.count(session) == 1
        assert await holders(own_redis.url) == []
        assert await call(a, alice, "recall") == "nothing"  # a new session


async def test_replicas_opening_a_principals_session_at_once_agree_on_one(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    async with stateful(tmp_path, postgres, own_redis) as (seen, _backend, a, b, alice):
        for _ in range(3):
            sessions: dict[str, str] = {}

            async def ask(gw: SecureGateway, name: str) -> None:
                sessions[name] = await call(gw, alice, "session")  # noqa: B023 (awaited in this round)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, a, "a")
                tg.start_soon(ask, b, "b")
            assert sessions["a"] == sessions["b"]
            # A replica that opened one too late ended its own: only the agreed one is left open at the backend.
            for gw in (a, b):
                await gw.runtime.pool.end_idle(0)
            assert sessions["a"] in seen.deleted


async def test_a_session_the_backend_forgot_is_opened_again_once_for_the_fleet(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    async with (
        stateful(tmp_path, postgres, own_redis) as (_seen, backend, a, b, alice),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        second = await forgotten(http, backend, a, b, alice)
        assert await call(b, alice, "remember", value="after") == "remembered"
        # Replica a finds the one b opened again, rather than opening a third.
        assert await call(a, alice, "recall") == "after"
        assert await call(a, alice, "session") == second


async def test_the_backends_stream_held_by_one_replica_reaches_a_subscription_made_on_the_other_once(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The client session subscribes to note://a through replica a (a holds the backend session's GET stream), then to
    note://b and note://a again through replica b (the backend refuses b a second stream). Updates of both reach the
    client's stream, each once."""
    async with watched_replicas(tmp_path, postgres, own_redis) as (http, a, _b, on_a, on_b):
        stream = UpdateStream(http, on_a)
        updates = stream.updates

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.read)
            with anyio.fail_after(10):
                await stream.opened.wait()
            assert rpc(await on_a.call("resources/subscribe", {"uri": "note://a"}))["result"] == {}
            assert rpc(await on_b.call("resources/subscribe", {"uri": "note://b"}))["result"] == {}
            # The same subscription on both replicas: each update still reaches the session once.
            assert rpc(await on_b.call("resources/subscribe", {"uri": "note://a"}))["result"] == {}
            for raw in (on_a, on_b):
                await raw.call("tools/call", touch("note://b"))
                await raw.call("tools/call", touch("note://a"))
            await stream.until(4)
            # (one more round, so a duplicate of the first ones would have arrived before it)
            await on_b.call("tools/call", touch("note://a"))
            await stream.until(5)
            # (their order depends on which replica delivered each)
            assert sorted(updates) == ["note://a", "note://a", "note://a", "note://b", "note://b"]

            # Replica a lets the backend session go (b still holds it): b takes its stream, and updates go on.
            assert await a.runtime.pool.end_idle(0) >= 1
            with anyio.fail_after(10):
                while len(updates) < 6:
                    await on_b.call("tools/call", touch("note://b"))
                    with anyio.move_on_after(0.5):
                        await stream.until(6)
            tg.cancel_scope.cancel()


async def test_the_last_replica_to_let_a_session_go_ends_the_fleets_even_if_it_held_a_stale_one(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The backend forgot the session; b opened the fleet's again; a, idle, still holds the one forgotten. b lets go
    first, then a: a ends the fleet's session too (else nobody would)."""
    async with (
        stateful(tmp_path, postgres, own_redis) as (seen, backend, a, b, alice),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        second = await forgotten(http, backend, a, b, alice)
        assert await b.runtime.pool.end_idle(0) >= 1
        assert second not in seen.deleted  # a still holds (what it thinks is) the fleet's session
        assert await a.runtime.pool.end_idle(0) >= 1
        assert second in seen.deleted
        assert await holders(own_redis.url) == []


async def test_a_replica_closing_a_session_never_takes_the_hold_of_the_one_that_replaced_it(own_redis: Redis) -> None:
    """Holds are per session object: on one replica, a session closing (idle) while the principal's next request
    opened its successor, which adopted the fleet's, does not leave the fleet's unheld (and ended by this release)."""
    status = FleetStatus()
    async with RedisClient.from_url(own_redis.url) as redis:
        fleet = UpstreamFleet(redis, status, Sealer([b"k" * 32], "upstream"))
        closing, successor = fleet.shared("lab/tools alice", 30), fleet.shared("lab/tools alice", 30)
        shared = await closing.share(Handshake("S1", LEGACY), None)
        assert shared is not None and shared.session_id == "S1"
        adopted = await successor.adopt()
        assert adopted is not None and adopted.token == shared.token
        assert await closing.release() == (False, "S1")  # the successor holds it: not ended
        assert await successor.release() == (True, "S1")


async def test_a_record_lost_with_redis_is_restored_by_its_holders(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """Redis restarted empty (it keeps no data to disk): at its next sweep, a replica holding the fleet's session
    records it again, so a replica opening the principal's session afresh joins it rather than opening another."""
    async with (
        stateful(tmp_path, postgres, own_redis) as (_seen, _backend, a, b, alice),
        RedisClient.from_url(own_redis.url) as redis,
    ):
        session = await call(a, alice, "session")
        assert await redis.flushall()
        await a.runtime.pool.renew_holds()
        assert await holders(own_redis.url) == [1]
        assert [await redis.pttl(key) > 0 for key in await redis.keys("vmcp:upstream:*")] == [True, True]
        assert await call(b, alice, "session") == session


def roots_backend() -> Any:
    """A 2025-11-25 backend whose tool asks its client for its roots on the session's GET stream (outside any
    request, as the protocol lets a server do), and answers with them."""
    mcp = FastMCP("roots")

    @mcp.tool
    async def roots(ctx: Context) -> list[str]:
        listed = await ctx.session.list_roots()
        return [str(root.uri) for root in listed.roots]

    return LegacyOnly(mcp.http_app(path="/mcp"))


async def test_a_backends_request_on_the_stream_is_answered_by_the_replica_that_can_ask_a_caller(
    own_redis: Redis,
) -> None:
    """Two replicas' copies of one backend session (real backend and Redis, the gateway's sessions without the rest of
    it): a holds the GET stream but has nobody to ask; b has a caller who declared roots. The backend's roots/list on
    the stream is put to b's caller, and b's answer reaches the backend."""
    async with (
        serve(roots_backend()) as backend,
        RedisClient.from_url(own_redis.url) as redis,
        httpx.AsyncClient(timeout=10) as http,
        anyio.create_task_group() as tg,
    ):
        status = FleetStatus()
        fleets = [UpstreamFleet(redis, status, Sealer([b"k" * 32], "upstream")) for _ in range(2)]

        def spawn(fn: Any) -> None:
            tg.start_soon(fn)

        a, b = (
            UpstreamSession(
                ServerRef("lab", "roots"), f"{backend.url}/mcp", http, spawn=spawn, shared=fleet.shared("alice", 30)
            )
            for fleet in fleets
        )
        heard = anyio.Event()

        def deliver(notice: Heard) -> None:
            if notice.kind == "message" and notice.message is not None:
                tg.start_soon(b.heard_elsewhere, notice.message_id, notice.message, notice.held)

        tg.start_soon(fleets[1].run, deliver, heard.set)
        with anyio.fail_after(10):
            await heard.wait()

        async def ignore(message: dict[str, Any]) -> None:
            return None

        a.watch("logs", ignore)  # a watches the session (so it holds its stream) but has nobody to ask
        await a.request("tools/list", {}, timeout=10)
        with anyio.fail_after(10):
            await a._stream_tried.wait()
        asked: list[str] = []

        async def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
            asked.append(method)
            return {"roots": [{"uri": "file:///work", "name": "work"}]}

        b.watch_requests("asks", ask)
        await b.request("tools/list", {}, timeout=10)  # b joins the session (the backend refuses it a second stream)
        assert a.session_id == b.session_id
        result = await a.request("tools/call", {"name": "roots", "arguments": {}}, timeout=20)
        assert "file:///work" in json.dumps(result) and asked == ["roots/list"]
        tg.cancel_scope.cancel()


async def test_a_replica_letting_go_after_redis_lost_the_record_leaves_the_session_to_the_others(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """Redis restarted empty before any sweep: a replica letting the session go cannot tell whether another holds
    it, so it does not end it; the other goes on with it."""
    async with (
        stateful(tmp_path, postgres, own_redis) as (seen, _backend, a, b, alice),
        RedisClient.from_url(own_redis.url) as redis,
    ):
        assert await call(a, alice, "remember", value="kept") == "remembered"
        session = await call(b, alice, "session")
        assert await redis.flushall()
        assert await a.runtime.pool.end_idle(0) >= 1
        assert session not in seen.deleted
        assert await call(b, alice, "recall") == "kept"


async def test_a_session_opened_while_redis_was_down_joins_the_fleets_when_it_is_back(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """Redis stops: replica a opens alice's backend session on its own. Redis comes back (empty), and b opens the
    fleet's. At a's next sweep, a uses the fleet's and ends its own: the backend no longer sees two sessions of
    alice's."""
    async with stateful(tmp_path, postgres, own_redis) as (seen, _backend, a, b, alice):
        own_redis.process.terminate()
        own_redis.process.wait(timeout=10)
        alone = await call(a, alice, "session")
        with redis_server(own_redis.port):
            fleets = await call(b, alice, "session")
            assert fleets != alone
            await a.runtime.pool.renew_holds()
            assert alone in seen.deleted
            assert await call(a, alice, "session") == fleets

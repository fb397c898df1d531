"""A caller's conversation over two replicas (real PostgreSQL and Redis, each test with a Redis of its own so no other
test's replicas hear its channels), whichever replica each request lands on:

- a 2025-11-25 session opened on one is served by the other: calls, lists, its log level, a cancellation, the
  caller's answer to a backend's question, its end, and its idle expiry. Without Redis each replica serves only the
  sessions it opened;
- a 2026-07-28 caller's retry carrying its answers goes on with the call held on the other replica.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from redis.asyncio import Redis as RedisClient

from tests.asking_backend import asking_backend
from tests.backends import Probe, build_lab
from tests.gateway.service.test_resource_updates import Probe as UpdatesProbe
from tests.gateway.service.test_resource_updates import watched_backend
from tests.gateway.test_shared_state import ENDPOINT, UNLIMITED, two_replicas
from tests.gateway.test_timing import ACCEPT, LEGACY, MODERN, Raw, rpc
from tests.gateway.wire.test_legacy import events
from tests.lab_config import ALICE, BOB
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt
from tests.sensitive import mark
from tests.services import Postgres, Redis
from tests.support import LegacyOnly, Served, serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.fleet.sealing import Sealer, digest
from virtual_mcp.fleet.sessions import CHANNEL, Notice, SessionFleet
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.types import PrincipalKind

pytestmark = pytest.mark.timeout(120)
ONE_SECOND_IDLE = UNLIMITED.model_copy(update={"session_idle_seconds": 1.0})
INITIALIZE = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}


@asynccontextmanager
async def replicas(
    tmp_path: Path, postgres: Postgres, backend: Served, redis_url: str | None, **settings: Any
) -> AsyncIterator[tuple[SecureGateway, SecureGateway]]:
    url = await fresh_postgres(postgres)
    async with two_replicas(tmp_path, backend.url, url, redis_url=redis_url, **settings) as (a, b):
        for gw in (a, b):
            await gw.runtime.fleet_subscribed()
        yield a, b


def on(raw: Raw, gw: SecureGateway) -> Raw:
    """The same session, its next requests sent to replica `gw`."""
    other = Raw(raw.http, f"{gw.url}{ENDPOINT}", raw.era, raw.bearer)
    other.session = raw.session
    return other


async def opened(http: httpx2.AsyncClient, gw: SecureGateway, token: str, **capabilities: Any) -> Raw:
    raw = Raw(http, f"{gw.url}{ENDPOINT}", LEGACY, token)
    raw.capabilities = capabilities
    await raw.open()
    return raw


async def test_a_session_opened_on_one_replica_is_served_by_the_other(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        token = await a.token(PrincipalKind.USER, ALICE)
        on_a = await opened(http, a, token)
        on_b = on(on_a, b)
        listed = rpc(await on_b.call("tools/list"))["result"]["tools"]
        assert "echo" in {tool["name"] for tool in listed}
        answer = await on_b.call("tools/call", {"name": "echo", "arguments": {"text": "on b"}})
        assert answer.headers["mcp-session-id"] == on_a.session
        assert rpc(answer)["result"]["structuredContent"] == {"result": "on b"}

        # Its log level, chosen through one replica, filters the log messages of a call on the other.
        assert rpc(await on_a.call("logging/setLevel", {"level": "warning"}))["result"] == {}
        for raw in (on_b, on_a):
            answer = await raw.call("tools/call", {"name": "chatty", "arguments": {}})
            *logged, final = events(answer.content)
            assert [m["params"]["level"] for m in logged] == ["warning"], logged
            assert final["result"]["content"][0]["text"] == "logged"

        # Another principal knows nothing of it on either replica.
        bob = idp_jwt(BOB, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])  # a teammate
        for gw in (a, b):
            stranger = on(on_a, gw)
            stranger.bearer = bob
            assert (await stranger.call("ping")).status_code == 404

        # Ended through one replica: gone on both.
        assert (await http.delete(on_b.url, headers=_headers(on_b))).status_code == 200
        for raw in (on_a, on_b):
            assert (await raw.call("ping")).status_code == 404


@asynccontextmanager
async def watched_replicas(
    tmp_path: Path, postgres: Postgres, redis: Redis
) -> AsyncIterator[tuple[httpx2.AsyncClient, SecureGateway, SecureGateway, Raw, Raw]]:
    """A backend whose `touch` tool says a resource changed, two replicas in front of it, and alice's session opened
    on the first: its requests to the first, and to the second."""
    app = watched_backend(UpdatesProbe()).http_app(path="/mcp")
    async with (
        serve(LegacyOnly(app)) as backend,  # type: ignore[arg-type]
        replicas(tmp_path, postgres, backend, redis.url) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE))
        yield http, a, b, on_a, on(on_a, b)


class UpdateStream:
    """A session's GET stream, read in the background (`read`): the URIs of the resource updates it carried."""

    def __init__(self, http: httpx2.AsyncClient, raw: Raw) -> None:
        self.http, self.raw = http, raw
        self.updates: list[str] = []
        self.opened = anyio.Event()  # (the gateway's first ping says the stream is open)
        self._arrived = anyio.Event()

    async def read(self) -> None:
        headers = {**_headers(self.raw), "accept": "text/event-stream"}
        async with self.http.stream("GET", self.raw.url, headers=headers) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                self.opened.set()
                if line.startswith("data: "):
                    message = json.loads(line[6:])
                    if message.get("method") == "notifications/resources/updated":
                        self.updates.append(message["params"]["uri"])
                        self._arrived.set()

    async def until(self, count: int, seconds: float = 10) -> None:
        """Until it carried `count` updates (or more)."""
        with anyio.fail_after(seconds):
            while len(self.updates) < count:
                await self._arrived.wait()
                self._arrived = anyio.Event()


def touch(uri: str) -> dict[str, Any]:
    """The params of a call of the watched backend's `touch` (it says `uri` changed)."""
    return {"name": "touch", "arguments": {"uri": uri}}


def _headers(raw: Raw) -> dict[str, str]:
    return {
        "authorization": f"Bearer {raw.bearer}",
        "mcp-session-id": str(raw.session),
        "mcp-protocol-version": LEGACY,
        "accept": ACCEPT,
    }


async def _stream(
    raw: Raw, body: dict[str, Any], received: list[dict[str, Any]], first: anyio.Event | None = None
) -> None:
    """POST `body` on `raw`'s session and collect the messages of its answer as they come (`first` set at the
    first)."""
    headers = {**_headers(raw), "content-type": "application/json"}
    async with raw.http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
        assert answer.status_code == 200, answer.status_code
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                received.append(json.loads(line[6:]))
                if first is not None:
                    first.set()


@asynccontextmanager
async def alices_session(
    tmp_path: Path, postgres: Postgres, redis: Redis, probe: Probe
) -> AsyncIterator[tuple[SecureGateway, Raw]]:
    """Two replicas before the lab backend (`probe` sees what it does), and a session of alice's opened on the first
    (its tools listed once): (the other replica, the session on the first)."""
    async with (
        serve(build_lab(probe).http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, redis.url) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE))
        await on_a.call("tools/list")
        yield b, on_a


async def test_a_cancellation_sent_to_the_other_replica_cancels_the_call(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    probe = Probe()
    async with alices_session(tmp_path, postgres, own_redis, probe) as (b, on_a):
        received: list[dict[str, Any]] = []
        body = {"jsonrpc": "2.0", "id": 21, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stream, on_a, body, received)
            with anyio.fail_after(10):
                await probe.slow_started.wait()
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 21}}
            assert (await on(on_a, b).post(cancel)).status_code == 202
            with anyio.fail_after(10):
                await probe.slow_cancelled.wait()  # replica a told the backend
        assert received == [{"jsonrpc": "2.0", "id": 21, "error": {"code": -32800, "message": "Request cancelled"}}]


async def test_a_delete_through_one_replica_ends_the_get_stream_and_calls_on_the_other(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    probe = Probe()
    async with alices_session(tmp_path, postgres, own_redis, probe) as (b, on_a):
        http = on_a.http
        received: list[dict[str, Any]] = []
        stream_ended = anyio.Event()

        async def get_stream() -> None:
            headers = {**_headers(on_a), "accept": "text/event-stream"}
            async with http.stream("GET", on_a.url, headers=headers) as stream:
                assert stream.status_code == 200
                async for _ in stream.aiter_bytes():
                    pass
            stream_ended.set()

        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
        async with anyio.create_task_group() as tg:
            tg.start_soon(get_stream)
            tg.start_soon(_stream, on_a, body, received)
            with anyio.fail_after(10):
                await probe.slow_started.wait()
            on_b = on(on_a, b)
            assert (await http.delete(on_b.url, headers=_headers(on_b))).status_code == 200
            with anyio.fail_after(10):
                await stream_ended.wait()
                await probe.slow_cancelled.wait()
        assert received == []  # its call's stream just ended, as for a session ended on its own replica


async def test_an_answer_posted_to_the_other_replica_reaches_the_question(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The backend asks during a call served by replica a; the caller POSTs its answer to replica b, which hands it
    to a; the same answer sent again is refused by both (a question is answered once)."""
    async with (
        serve(LegacyOnly(asking_backend().http_app(path="/mcp"))) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE), elicitation={"form": {}})
        await on_a.call("tools/list")
        on_b = on(on_a, b)
        received: list[dict[str, Any]] = []
        asked = anyio.Event()
        body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "ask_name", "arguments": {}}}
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stream, on_a, body, received, asked)
            with anyio.fail_after(10):
                await asked.wait()
            [question] = received
            assert question["method"] == "elicitation/create"
            answer = {"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept", "content": {"name": "Al"}}}
            assert (await on_b.post(answer)).status_code == 202
        assert received[-1]["id"] == 9
        assert "Al" in received[-1]["result"]["content"][0]["text"]
        for raw in (on_a, on_b):
            again = await raw.post(answer)
            assert again.status_code == 400 and question["id"] in again.text

        # Answered on the replica that asked: the other replica refuses the same answer at once.
        received.clear()
        asked = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stream, on_a, {**body, "id": 10}, received, asked)
            with anyio.fail_after(10):
                await asked.wait()
            answer = {**answer, "id": received[0]["id"]}
            assert (await on_a.post(answer)).status_code == 202
            again = await on_b.post(answer)
            assert again.status_code == 400 and answer["id"] in again.text


async def test_a_session_used_on_one_replica_does_not_expire_on_the_other(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """With an idle time of a second: the session opened on a and then used only on b for three seconds is still
    served by a; left alone, it expires on both."""
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url, limits=ONE_SECOND_IDLE) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE))
        on_b = on(on_a, b)
        until = anyio.current_time() + 3
        while anyio.current_time() < until:
            assert (await on_b.call("ping")).status_code == 200
        assert (await on_a.call("ping")).status_code == 200
        # Left alone: each replica's part of it ends (by its own sweep, once the fleet's record has expired).
        parts = [gw.runtime.sessions[ENDPOINT].find(str(on_a.session), f"user:{ALICE}") for gw in (a, b)]
        with anyio.fail_after(10):
            for part in parts:
                assert part is not None
                await part.closed.wait()
        for raw in (on_a, on_b):
            assert (await raw.call("ping")).status_code == 404


async def test_without_redis_each_replica_serves_the_sessions_it_opened(tmp_path: Path, postgres: Postgres) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, None) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE))
        assert (await on(on_a, b).call("ping")).status_code == 404  # the client opens a new session there
        assert (await on_a.call("ping")).status_code == 200


async def a_session_over_replicas(transport: StreamableHttpTransport, probe: Probe, rounds: int) -> None:
    """What a 2025-11-25 client does in a session whose requests land on different replicas (`transport` spreads
    them), each checked: the handshake, lists and calls, its log level chosen once and applied to the log messages of
    later calls, progress, and a call it abandons (its `notifications/cancelled` reaches the replica serving it, and
    the backend is told)."""
    progress: list[float] = []
    logged: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async def on_log(message: Any) -> None:
        logged.append(message.level)

    async with Client(transport, mode="legacy", progress_handler=on_progress, log_handler=on_log) as client:
        for _ in range(rounds):
            assert "echo" in {tool.name for tool in await client.list_tools()}
            assert (await client.call_tool("echo", {"text": "hi"})).data == "hi"
        await client.set_logging_level("warning")
        for _ in range(rounds):
            assert (await client.call_tool("chatty", {})).data == "logged"
            assert (await client.call_tool("progress", {"steps": 2})).data == "2 steps"
        assert logged == ["warning"] * rounds
        assert progress == [1, 2] * rounds
        async with anyio.create_task_group() as tg:

            async def abandoned() -> None:
                await client.call_tool("slow", {})

            tg.start_soon(abandoned)
            with anyio.fail_after(10):
                await probe.slow_started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(10):
            await probe.slow_cancelled.wait()
        assert (await client.call_tool("echo", {"text": "after"})).data == "after"


async def test_an_official_client_whose_every_request_lands_on_the_next_replica(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """fastmcp's client (the official SDK's session underneath), every HTTP request of it sent to the next replica in
    turn, as a load balancer without stickiness would (`a_session_over_replicas`)."""
    probe = Probe()
    async with (
        serve(build_lab(probe).http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url) as (a, b),
    ):
        token = await a.token(PrincipalKind.USER, ALICE)
        turns = Alternating([a.url, b.url])
        transport = StreamableHttpTransport(f"{a.url}{ENDPOINT}", auth=token, httpx_client_factory=turns.client)
        await a_session_over_replicas(transport, probe, rounds=3)
        assert min(turns.served.values()) >= 5, turns.served  # both replicas served much of it


class Alternating:
    """An HTTP client for the test's MCP client that sends each request to the next replica in turn."""

    def __init__(self, urls: list[str]) -> None:
        self._targets = [httpx2.URL(url) for url in urls]
        self.served = {url: 0 for url in urls}
        self._next = 0

    def client(self, **options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=_Turns(self), **options)

    def target(self) -> httpx2.URL:
        target = self._targets[self._next % len(self._targets)]
        self._next += 1
        self.served[str(target).rstrip("/")] += 1
        return target


class _Turns(httpx2.AsyncBaseTransport):
    def __init__(self, turns: Alternating) -> None:
        self._turns = turns
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = self._turns.target()
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


# The fleet's part alone (virtual_mcp/fleet/sessions.py), on a real Redis.


def _fleet(redis: RedisClient, key: bytes = b"k" * 32) -> SessionFleet:
    return SessionFleet(redis, FleetStatus(), Sealer([key], "sessions"))


async def test_what_callers_say_crosses_redis_sealed_and_only_a_replica_of_the_fleet_opens_it(own_redis: Redis) -> None:
    secret = "answer-" + uuid.uuid4().hex
    mark(secret)
    async with RedisClient.from_url(own_redis.url) as redis, redis.pubsub() as watcher:
        await watcher.subscribe(CHANNEL)
        sender, receiver, stranger = _fleet(redis), _fleet(redis), _fleet(redis, b"s" * 32)
        message = {"jsonrpc": "2.0", "id": "vmcp-ask-1", "result": {"content": {"name": secret}}}
        assert await receiver.answer("session-1", message) is False  # no question waits
        await sender.asked("session-1", "vmcp-ask-1")
        assert await receiver.answer("session-1", message)  # (the watcher hears it)
        await sender.push("session-1", {"method": "notifications/message", "params": {"data": secret}})
        seen: list[bytes] = []
        with anyio.fail_after(5):
            while len(seen) < 2:
                got = await watcher.get_message(ignore_subscribe_messages=True, timeout=1)
                if got is not None:
                    seen.append(got["data"])
        assert all(secret.encode() not in raw for raw in seen)
        assert not [key async for key in redis.scan_iter() if secret.encode() in key]
        notice = sender.decode(seen[0])
        assert notice is not None and notice.kind == "answer" and notice.body == message
        assert receiver.decode(seen[0]) is None  # its own
        assert stranger.decode(seen[0]) is None  # another master key: cannot open it
        assert await sender.answer("session-1", message) is False  # answered once


def test_only_fresh_notices_sealed_by_the_fleet_are_read() -> None:
    """A notice is sealed whole, with its time: one in the clear, one sealed with another key, one turned to
    another session (its sealed part copied under another), a late replay, a malformed one: none is read."""
    reader = _fleet(RedisClient())  # (never connects: decoding alone)

    def sealed(inner: dict[str, Any], key: bytes = b"k" * 32, origin: str = "other") -> str:
        box = Sealer([key], "sessions").seal(json.dumps(inner).encode())
        return json.dumps({"v": "1", "from": origin, "x": box})

    now = time.time()
    good = {"k": "cancel", "s": "d" * 64, "b": 7, "at": now}
    assert reader.decode(sealed(good)) == Notice("cancel", "d" * 64, 7)
    assert reader.decode(sealed({**good, "k": "push", "b": {"method": "m"}})) == Notice(
        "push", "d" * 64, {"method": "m"}
    )
    for bad in [
        json.dumps({"v": "1", "from": "other", "k": "cancel", "s": "d" * 64, "b": 7}),  # in the clear
        sealed(good, key=b"z" * 32),  # another fleet's key
        sealed(good, origin=reader.origin),  # its own
        sealed({**good, "at": now - 3600}),  # replayed late
        sealed({**good, "at": "now"}),
        sealed({**good, "k": "drop"}),
        sealed({**good, "b": True}),  # not a request id
        sealed({**good, "b": None}),
        sealed({**good, "s": 5}),
        sealed({**good, "k": "level", "b": 3}),
        sealed({**good, "k": "answer", "b": "not a message"}),
        json.dumps({"v": "2", "from": "other", "x": "AAAA"}),
    ]:
        assert reader.decode(bad) is None, bad
    assert reader.decode(b"not json") is None
    # The sealed part of one session's notice put under another session's: the session is inside, so it stays.
    moved = json.loads(sealed(good))
    assert reader.decode(json.dumps({**moved, "s": "e" * 64})) == Notice("cancel", "d" * 64, 7)


async def test_a_2026_07_28_retry_on_the_other_replica_goes_on_with_the_call_held_there(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """A 2025-11-25 backend asks twice during one call; the 2026-07-28 caller's call is held on replica a. Its
    retries land on b, which hands each answer to a and passes on what comes of it: the next question (under a new
    state), then the result. A state used through one replica is refused by the other."""
    async with (
        serve(LegacyOnly(asking_backend().http_app(path="/mcp"))) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        token = await a.token(PrincipalKind.USER, ALICE)
        on_a, on_b = (Raw(http, f"{gw.url}{ENDPOINT}", MODERN, token) for gw in (a, b))
        for raw in (on_a, on_b):
            raw.capabilities = {"elicitation": {"form": {}}}

        async def call(raw: Raw, **extra: Any) -> dict[str, Any]:
            answer = await raw.call("tools/call", {"name": "ask_twice", "arguments": {}, **extra})
            return dict(rpc(answer))

        first = (await call(on_a))["result"]
        assert first["resultType"] == "input_required"
        [(key, asked)] = first["inputRequests"].items()
        assert asked["params"]["message"] == "Your first name?"
        answer = {key: {"action": "accept", "content": {"name": "Ada"}}}
        second = (await call(on_b, inputResponses=answer, requestState=first["requestState"]))["result"]
        [(key, asked)] = second["inputRequests"].items()
        assert asked["params"]["message"] == "Your last name?"
        answer = {key: {"action": "accept", "content": {"name": "Lovelace"}}}
        done = (await call(on_b, inputResponses=answer, requestState=second["requestState"]))["result"]
        assert done["content"][0]["text"] == "Ada Lovelace"
        replayed = (await call(on_a, inputResponses=answer, requestState=second["requestState"]))["error"]
        assert "used already" in replayed["message"]


async def test_an_official_2026_07_28_client_answering_through_either_replica(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """fastmcp's client in the 2026-07-28 era, each request to the next replica: the calls held on one replica
    for its answers go on when its retries land on the other."""
    asked: list[str] = []

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return {"name": "Ada" if "first" in message or "your name" in message.lower() else "Lovelace"}

    async with (
        serve(LegacyOnly(asking_backend().http_app(path="/mcp"))) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url) as (a, b),
    ):
        token = await a.token(PrincipalKind.USER, ALICE)
        turns = Alternating([a.url, b.url])
        transport = StreamableHttpTransport(f"{a.url}{ENDPOINT}", auth=token, httpx_client_factory=turns.client)
        async with Client(transport, mode="2026-07-28", elicitation_handler=elicit) as client:
            for _ in range(2):
                assert "Ada" in "".join(
                    getattr(p, "text", "") for p in (await client.call_tool("ask_name", {})).content
                )
                result = await client.call_tool("ask_twice", {})
                assert "".join(getattr(p, "text", "") for p in result.content) == "Ada Lovelace"
        assert asked == ["What is your name?", "Your first name?", "Your last name?"] * 2
        assert min(turns.served.values()) >= 3, turns.served


async def test_a_principals_session_quota_counts_its_sessions_on_every_replica(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """A quota of two: one session opened on each replica, and a third is refused by both; a session ended through
    either frees its place; the fleet's maximum is counted over both replicas too."""
    limits = UNLIMITED.model_copy(update={"sessions_per_principal": 2, "max_sessions": 3})
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url, limits=limits) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        alice = await a.token(PrincipalKind.USER, ALICE)
        first, second = await opened(http, a, alice), await opened(http, b, alice)
        for gw in (a, b):
            refused = await Raw(http, f"{gw.url}{ENDPOINT}", LEGACY, alice).call("initialize", INITIALIZE)
            assert refused.status_code == 429 and "you hold 2 of at most 2" in refused.text
        assert (await http.delete(first.url, headers=_headers(on(first, b)))).status_code == 200
        third = await opened(http, b, alice)
        assert (await on(third, a).call("ping")).status_code == 200
        bob = idp_jwt(BOB, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
        await opened(http, a, bob)  # the fleet's third
        refused = await Raw(http, f"{b.url}{ENDPOINT}", LEGACY, bob).call("initialize", INITIALIZE)
        assert refused.status_code == 503 and "maximum of 3 open sessions" in refused.text
        assert second.session != third.session


async def test_a_replica_that_missed_a_sessions_end_finds_it_out_at_its_next_sweep(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The record of a session both replicas serve goes without a word on the channel (as when a replica was
    reconnecting to Redis when the session was deleted): each replica ends its part at its next sweep."""
    # A sweep every 5 s, and an idle time well past the test's patience: only the sweep's look at the record ends it.
    sweeps = UNLIMITED.model_copy(update={"session_idle_seconds": 60.0})
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        replicas(tmp_path, postgres, backend, own_redis.url, limits=sweeps) as (a, b),
        httpx2.AsyncClient(timeout=10) as http,
        RedisClient.from_url(own_redis.url) as redis,
    ):
        on_a = await opened(http, a, await a.token(PrincipalKind.USER, ALICE))
        assert (await on(on_a, b).call("ping")).status_code == 200
        parts = [gw.runtime.sessions[ENDPOINT].find(str(on_a.session), f"user:{ALICE}") for gw in (a, b)]
        assert await redis.delete(f"vmcp:session:{digest(str(on_a.session))}") == 1
        with anyio.fail_after(15):
            for part in parts:
                assert part is not None
                await part.closed.wait()
        for raw in (on_a, on(on_a, b)):
            assert (await raw.call("ping")).status_code == 404


async def test_a_subscription_made_through_one_replica_reaches_the_stream_on_the_other_and_ends_through_either(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The session's GET stream is held by replica b; it subscribes through replica a, whose backend session sends
    the update: the update reaches the stream on b. It unsubscribes through b: the updates a's backend session
    still sends stop reaching it (an update of another resource it subscribed to still does)."""
    async with watched_replicas(tmp_path, postgres, own_redis) as (http, _a, _b, on_a, on_b):
        await on_a.call("tools/list")
        stream = UpdateStream(http, on_b)

        async def next_update() -> str:
            await stream.until(1)
            return stream.updates.pop(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.read)
            with anyio.fail_after(10):
                await stream.opened.wait()
            assert rpc(await on_a.call("resources/subscribe", {"uri": "note://a"}))["result"] == {}
            await on_a.call("tools/call", touch("note://a"))
            assert await next_update() == "note://a"  # from a's backend session to the stream on b

            assert rpc(await on_b.call("resources/unsubscribe", {"uri": "note://a"}))["result"] == {}
            assert rpc(await on_a.call("resources/subscribe", {"uri": "note://b"}))["result"] == {}
            with anyio.fail_after(10):  # (until a has heard the unsubscription: then only b's update comes)
                while True:
                    await on_a.call("tools/call", touch("note://a"))
                    await on_a.call("tools/call", touch("note://b"))
                    seen = [await next_update()]
                    while seen[-1] != "note://b":
                        seen.append(await next_update())
                    if seen == ["note://b"]:
                        break
            tg.cancel_scope.cancel()

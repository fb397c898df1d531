"""2025-11-25 tasks over the fleet (real PostgreSQL and Redis, the MCP reference server, two replicas in this process):
a task created through one replica is polled, answered, finished and cancelled through the other, with the same
ids."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from redis.asyncio import Redis as RedisClient

from tests.fleet.test_sessions import replicas
from tests.gateway.service.test_tasks import REF, Clock, route
from tests.gateway.test_shared_state import ENDPOINT
from tests.interop.everything import everything_server
from tests.interop.test_everything_tasks import RELATED, RESEARCH, Session, clarify
from tests.lab_config import ALICE
from tests.services import Postgres, Redis
from tests.support import Served
from virtual_mcp.errors import InvalidParams
from virtual_mcp.fleet.sealing import Sealer
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.fleet.tasks import TaskFleet
from virtual_mcp.gateway.service.tasks import TaskRoutes
from virtual_mcp.types import PrincipalKind

pytestmark = pytest.mark.timeout(180)


class _Backend(Served):
    """The reference server's base URL, as the replicas' configuration names a backend."""

    def __init__(self, url: str) -> None:
        self.url = url


async def test_a_task_created_through_one_replica_is_served_through_the_other(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    async with (
        everything_server() as everything,
        replicas(tmp_path, postgres, _Backend(everything.url.removesuffix("/mcp")), own_redis.url) as (a, b),
        httpx2.AsyncClient(timeout=30) as http,
    ):
        alice = await a.token(PrincipalKind.USER, ALICE)
        on_a, on_b = f"{a.url}{ENDPOINT}", f"{b.url}{ENDPOINT}"
        session = Session(http, on_a, alice)
        await session.open()
        arguments = {"topic": "gateways", "ambiguous": True}
        created = await session.request("tools/call", {"name": RESEARCH, "arguments": arguments, "task": {}})
        task_id = created["result"]["task"]["taskId"]

        session.url = on_b  # every request about it now lands on the other replica
        polled_answer = await session.request("tasks/get", {"taskId": task_id})
        assert "result" in polled_answer, polled_answer
        polled = polled_answer["result"]
        assert polled["taskId"] == task_id and polled["status"] in ("working", "input_required")
        final = (await session.request("tasks/result", {"taskId": task_id}, clarify))["result"]
        assert "Clarification" in str(final) and session.asked_about == [task_id]
        assert session.asked[0]["_meta"][RELATED]["taskId"] == task_id

        session.url = on_a
        done = (await session.request("tasks/get", {"taskId": task_id}))["result"]
        assert (done["taskId"], done["status"]) == (task_id, "completed")
        session.url = on_b
        second = await session.request("tools/call", {"name": RESEARCH, "arguments": {"topic": "x"}, "task": {}})
        second_id = second["result"]["task"]["taskId"]
        session.url = on_a
        cancelled = (await session.request("tasks/cancel", {"taskId": second_id}))["result"]
        assert (cancelled["taskId"], cancelled["status"]) == (second_id, "cancelled")

        # An id never given: no such task, on both.
        for url in (on_a, on_b):
            session.url = url
            never = (await session.request("tasks/get", {"taskId": "not-a-task"}))["error"]
            assert never["code"] == -32602 and "no such task" in never["message"]


async def test_a_task_on_a_backend_session_the_other_replica_does_not_hold_is_no_such_task_there(
    tmp_path: Path, postgres: Postgres, own_redis: Redis
) -> None:
    """The fleet lost the shared backend session's record (Redis emptied) before the other replica joined it, so that
    replica opened a backend session of its own: a task on the first is not asked of it (another session's task
    ids mean nothing there, or another task), but answered as no such task."""
    async with (
        everything_server() as everything,
        replicas(tmp_path, postgres, _Backend(everything.url.removesuffix("/mcp")), own_redis.url) as (a, b),
        httpx2.AsyncClient(timeout=30) as http,
        RedisClient.from_url(own_redis.url) as redis,
    ):
        alice = await a.token(PrincipalKind.USER, ALICE)
        session = Session(http, f"{a.url}{ENDPOINT}", alice)
        await session.open()
        created = await session.request("tools/call", {"name": RESEARCH, "arguments": {"topic": "y"}, "task": {}})
        task_id = created["result"]["task"]["taskId"]
        assert await redis.delete(*[key async for key in redis.scan_iter("vmcp:upstream:*")])
        session.url = f"{b.url}{ENDPOINT}"
        lost = (await session.request("tasks/get", {"taskId": task_id}))["error"]
        assert lost == {"code": -32602, "message": "no such task (unknown, expired, or not yours)"}


async def test_a_route_in_the_fleet_is_found_only_by_its_creator_on_its_endpoint_and_is_sealed(
    own_redis: Redis,
) -> None:
    """Two replicas' task routes over one Redis: what one made, the other finds for the same principal on the same
    endpoint only (anyone else: no such task); the route expires with the task; Redis holds neither the task id nor
    the principal readable."""
    clock = Clock()
    status = FleetStatus()
    async with RedisClient.from_url(own_redis.url) as redis:
        sealer = Sealer([b"k" * 32], "tasks")
        made, other = (
            TaskRoutes(clock, shared=TaskFleet(redis, status, sealer), servers={REF.key: REF}) for _ in range(2)
        )
        task_id = made.add(route(expires=clock.now + 60))
        await made.share(task_id, route(expires=clock.now + 60), "backend-session-7")
        found = await other.locate(task_id, "user:alice", "/mcp")
        assert (found.tool, found.server, found.upstream_id, found.session, found.held_by) == (
            "lab__everything__research",
            REF,
            "backend-1",
            None,  # the backend session the fleet holds as one: the pool's
            "backend-session-7",
        )
        assert 59 < found.expires - clock.now <= 60
        for subject, endpoint in (("user:bob", "/mcp"), ("user:alice", "/mcp-server/lab/everything/server")):
            with pytest.raises(InvalidParams, match="no such task"):
                await other.locate(task_id, subject, endpoint)
        [key] = [k async for k in redis.scan_iter("vmcp:task:*")]
        stored = await redis.get(key)
        assert task_id.encode() not in key + stored
        assert not any(plain in stored for plain in (b"alice", b"backend-1", b"backend-session-7"))
        assert 0 < await redis.pttl(key) <= 60_000
        # Without a fleet, a replica knows only its own.
        with pytest.raises(InvalidParams, match="no such task"):
            await TaskRoutes(clock).locate(task_id, "user:alice", "/mcp")

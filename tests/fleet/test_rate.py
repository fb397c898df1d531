"""Request rates counted by the fleet (virtual_mcp/fleet/rate.py) on a real Redis server: a caller spread over two
replicas gets the configured allowance once, not once per replica; callers are counted apart; and with Redis
unreachable each replica counts alone, at once, without making callers wait for Redis."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from tests.ports import free_ports
from tests.services import Redis as RedisServer
from virtual_mcp.errors import TooManyRequests
from virtual_mcp.fleet.rate import FleetRequestLimiter
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.types import Principal, PrincipalKind

ALICE = Principal("alice@x.example", PrincipalKind.USER)
BOB = Principal("bob@x.example", PrincipalKind.USER)
SLOW = 0.001  # requests per second: nothing refills during a test


async def admitted(limiter: FleetRequestLimiter, principal: Principal) -> bool:
    try:
        await limiter.admit(principal)
    except TooManyRequests as refused:
        assert "at most 0.001 per second (bursts of 5)" in refused.message
        assert refused.retry_after is not None and refused.retry_after > 100
        return False
    return True


async def test_a_caller_spread_over_replicas_gets_one_allowance(redis: RedisServer) -> None:
    one, two = Redis.from_url(redis.url), Redis.from_url(redis.url)
    try:
        replicas = [FleetRequestLimiter(client, FleetStatus(), SLOW, 5) for client in (one, two)]
        outcomes = [await admitted(replicas[i % 2], ALICE) for i in range(8)]
        assert outcomes == [True] * 5 + [False] * 3  # five in all, not five per replica
        assert await admitted(replicas[1], BOB)  # another caller has an allowance of their own
    finally:
        await one.aclose()
        await two.aclose()


async def test_without_redis_each_replica_counts_alone_and_nobody_waits() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_ports(1)[0]}/0", socket_connect_timeout=1)
    status = FleetStatus()
    limiter = FleetRequestLimiter(client, status, SLOW, 5)
    try:
        with anyio.fail_after(1):  # far less than Redis's connect timeout times the requests
            outcomes = [await admitted(limiter, ALICE) for _ in range(7)]
    finally:
        await client.aclose()
    assert outcomes == [True] * 5 + [False] * 2  # still limited: by this replica's own count
    assert status.degraded("rate_limit")


@pytest.mark.parametrize("subject", ["a:b", "*", "x" * 300])
async def test_a_subject_is_a_key_not_a_pattern(redis: RedisServer, subject: str) -> None:
    client = Redis.from_url(redis.url)
    try:
        limiter = FleetRequestLimiter(client, FleetStatus(), SLOW, 5)
        principal = Principal(subject, PrincipalKind.USER)
        assert all([await admitted(limiter, principal) for _ in range(5)])
        assert not await admitted(limiter, principal)
        assert await admitted(limiter, BOB)
    finally:
        await client.aclose()

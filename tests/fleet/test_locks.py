"""The fleet's per-key lock (virtual_mcp/fleet/locks.py) on a real Redis server: one holder at a time across
replicas, a lease that lets the next holder in when a holder stops, a release that never frees another's lock, and
a Redis outage that leaves each replica its own lock."""

from __future__ import annotations

import logging

import anyio
import pytest
from redis.asyncio import Redis

from tests.ports import free_ports
from tests.services import Redis as RedisServer
from virtual_mcp.fleet.locks import RedisLocks
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.metrics import Metrics


async def test_one_holder_at_a_time_across_replicas(redis: RedisServer) -> None:
    one, two = Redis.from_url(redis.url), Redis.from_url(redis.url)
    replicas = [RedisLocks(one, FleetStatus()), RedisLocks(two, FleetStatus())]
    holding, most = 0, 0

    async def work(locks: RedisLocks) -> None:
        nonlocal holding, most
        async with locks.lock("3lo:g/github:user:alice"):
            holding += 1
            most = max(most, holding)
            await anyio.wait_all_tasks_blocked()  # give every other waiter its chance to get in
            holding -= 1

    try:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(work, replicas[i % 2])
        assert most == 1
        assert await one.get("vmcp:lock:3lo:g/github:user:alice") is None  # released
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_holder_that_stopped_loses_the_lock_and_cannot_free_the_next_ones(redis: RedisServer) -> None:
    client = Redis.from_url(redis.url)
    try:
        # A replica that took the lock and stopped (paused, crashed): its lease runs out.
        await client.set("vmcp:lock:k", "stopped-holder", px=300)
        locks = RedisLocks(client, FleetStatus(), lease_seconds=5)
        with anyio.fail_after(5):
            async with locks.lock("k"):
                mine = await client.get("vmcp:lock:k")
                assert mine is not None and mine != b"stopped-holder"
                await locks._release("vmcp:lock:k", "stopped-holder")  # the stopped one wakes up and releases
                assert await client.get("vmcp:lock:k") == mine  # still this holder's
    finally:
        await client.aclose()


async def test_a_slow_holder_keeps_its_lease(redis: RedisServer) -> None:
    client = Redis.from_url(redis.url)
    try:
        locks = RedisLocks(client, FleetStatus(), lease_seconds=0.3)
        async with locks.lock("slow"):
            held = await client.get("vmcp:lock:slow")
            start = anyio.current_time()
            while anyio.current_time() - start < 1.0:  # three leases and more: still this holder's
                assert await client.get("vmcp:lock:slow") == held
    finally:
        await client.aclose()


async def test_redis_down_leaves_each_replica_its_own_lock(caplog: pytest.LogCaptureFixture) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_ports(1)[0]}/0", socket_connect_timeout=1)
    metrics = Metrics()
    status = FleetStatus(metrics)
    locks = RedisLocks(client, status)
    holding, most = 0, 0

    async def work() -> None:
        nonlocal holding, most
        async with locks.lock("k"):
            holding += 1
            most = max(most, holding)
            await anyio.wait_all_tasks_blocked()
            holding -= 1

    with caplog.at_level(logging.WARNING, logger="virtual_mcp.fleet.status"):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(work)
    await client.aclose()
    assert most == 1 and status.degraded("locks")
    # One line for the outage, not one per waiter; every failure counted; readiness says which part is alone.
    assert caplog.text.count("Redis unreachable for locks") == 1
    # Only the first waiter asked Redis: the others, queued behind it, did not each wait out the failure.
    assert 'vmcp_fleet_redis_errors_total{part="locks"} 1.0' in metrics.exposition().decode()
    assert 'vmcp_fleet_degraded{part="locks"} 1.0' in metrics.exposition().decode()
    assert status.problem() == "degraded: Redis unreachable (locks: ConnectionError)"

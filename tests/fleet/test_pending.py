"""Consent records over the fleet (virtual_mcp/fleet/pending.py) on a real Redis: what one replica puts another
finds, each is taken once, an owner holds at most their bound, nothing is readable in Redis, and while Redis is down
a replica keeps its own."""

from __future__ import annotations

import secrets
import time

from redis.asyncio import Redis as RedisClient

from tests.ports import free_ports
from tests.sensitive import mark
from tests.services import Redis, redis_contents
from virtual_mcp.fleet.pending import RedisPending
from virtual_mcp.fleet.sealing import Sealer
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.outbound.pending import LocalPending

SEALER = Sealer([b"p" * 32], "consent")


def table(redis: RedisClient, per_owner: int = 2, name: str = "") -> RedisPending:
    name = name or secrets.token_hex(4)
    return RedisPending(redis, FleetStatus(), SEALER, name, per_owner, LocalPending(per_owner, 100, time.monotonic))


async def test_one_replicas_entry_is_found_by_another_and_taken_once(redis: Redis) -> None:
    ticket = secrets.token_urlsafe(32)
    mark(ticket)
    async with RedisClient.from_url(redis.url) as client:
        name = secrets.token_hex(4)
        one, two = table(client, name=name), table(client, name=name)
        await one.put(ticket, "alice", {"verifier": ticket}, 60)
        assert await two.get(ticket) == {"verifier": ticket}
        assert await two.owned("alice") == [(ticket, {"verifier": ticket})]
        await two.replace(ticket, {"verifier": ticket, "failures": 1})
        assert await one.pop(ticket) == {"verifier": ticket, "failures": 1}
        assert await two.pop(ticket) is None and await one.get(ticket) is None
        assert ticket.encode() not in await redis_contents(redis.url)


async def test_an_owner_holds_at_most_their_bound_and_loses_their_own_oldest(redis: Redis) -> None:
    async with RedisClient.from_url(redis.url) as client:
        pending = table(client, per_owner=2)
        for key in ("a1", "a2", "a3"):
            await pending.put(key, "alice", {"k": key}, 60)
        await pending.put("b1", "bob", {"k": "b1"}, 60)
        assert await pending.get("a1") is None
        assert [key for key, _ in await pending.owned("alice")] == ["a2", "a3"]
        await pending.drop_owner("alice")
        assert await pending.owned("alice") == [] and await pending.get("b1") == {"k": "b1"}


async def test_while_redis_is_down_a_replica_keeps_its_own() -> None:
    async with RedisClient(host="127.0.0.1", port=free_ports(1)[0], socket_connect_timeout=0.5) as down:
        status = FleetStatus()
        pending = RedisPending(down, status, SEALER, "t", 2, LocalPending(2, 100, time.monotonic))
        await pending.put("k1", "alice", {"v": 1}, 60)
        assert status.degraded("sessions")
        assert await pending.get("k1") == {"v": 1}
        assert await pending.pop("k1") == {"v": 1} and await pending.pop("k1") is None

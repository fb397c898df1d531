"""The fleet's event channel (virtual_mcp/fleet/events.py) on real Redis servers: one replica's events reach the
others and not itself, anything else on the channel is ignored, and a broken channel is made again and says that
events may have been missed."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from redis.asyncio import Redis

from tests.ports import free_ports
from tests.services import Redis as RedisServer
from tests.services import redis_server
from virtual_mcp.fleet.events import CHANNEL, FleetEvent, FleetEvents, announce, decode, encode, user_digest
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.metrics import Metrics


def test_only_this_versions_events_are_read() -> None:
    assert decode(encode("a1", FleetEvent("revoked"))) == ("a1", FleetEvent("revoked"))
    assert decode(encode("a1", FleetEvent("list_changed", "g/s"))) == ("a1", FleetEvent("list_changed", "g/s"))
    connected = FleetEvent("connected", "g/s", user_digest("alice@example.com"))
    assert decode(encode("a1", connected)) == ("a1", connected)
    assert "alice" not in encode("a1", connected)
    for raw in [
        b"not json",
        b"[]",
        b'{"v":"2","from":"a","kind":"revoked"}',  # another version
        b'{"v":"1","from":"a","kind":"drop_tables"}',  # not a kind
        b'{"v":"1","from":7,"kind":"revoked"}',
        b'{"v":"1","from":"a","kind":"list_changed"}',  # which server?
        b'{"v":"1","from":"a","kind":"list_changed","server":["g/s"]}',
        b'{"v":"1","from":"a","kind":"revoked","pad":"' + b"x" * 2000 + b'"}',  # too long to be ours
        b'{"v":"1","from":"a","kind":"connected","server":"g/s"}',  # whose?
        b'{"v":"1","from":"a","kind":"connected","server":"g/s","who":"alice@example.com"}',  # a name, not a digest
    ]:
        assert decode(raw) is None, raw


class Heard:
    def __init__(self) -> None:
        self.events: list[FleetEvent] = []
        self.missed = 0
        self.subscribed = anyio.Event()
        self._arrived = anyio.Event()

    def deliver(self, event: FleetEvent) -> None:
        self.events.append(event)
        self._arrived.set()

    def on_missed(self) -> None:
        self.missed += 1

    def on_subscribed(self) -> None:
        self.subscribed.set()

    async def next(self) -> FleetEvent:
        with anyio.fail_after(5):
            while not self.events:
                await self._arrived.wait()
                self._arrived = anyio.Event()
        return self.events.pop(0)


async def listening(tg: anyio.abc.TaskGroup, events: FleetEvents, heard: Heard) -> None:
    tg.start_soon(events.run, heard.deliver, heard.on_missed, heard.on_subscribed)
    with anyio.fail_after(5):
        await heard.subscribed.wait()


@asynccontextmanager
async def listener(url: str, status: FleetStatus, **options: float) -> AsyncIterator[tuple[FleetEvents, Heard]]:
    """A replica's end of the channel on `url`, subscribed, until the block ends; `heard.subscribed` is made anew,
    so the block can wait for the next subscription (after a break)."""
    client = Redis.from_url(url, socket_connect_timeout=1)
    events, heard = FleetEvents(client, status, **options), Heard()
    try:
        async with anyio.create_task_group() as tg:
            await listening(tg, events, heard)
            heard.subscribed = anyio.Event()
            yield events, heard
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()


async def test_a_replicas_events_reach_the_others_not_itself(redis: RedisServer) -> None:
    one, two, raw = Redis.from_url(redis.url), Redis.from_url(redis.url), Redis.from_url(redis.url)
    a, b = FleetEvents(one, FleetStatus()), FleetEvents(two, FleetStatus())
    heard_a, heard_b = Heard(), Heard()
    try:
        async with anyio.create_task_group() as tg:
            await listening(tg, a, heard_a)
            await listening(tg, b, heard_b)
            assert await a.publish(FleetEvent("list_changed", "g/s"))
            # Noise on the channel (someone else's message, a forged kind) is passed over, not delivered.
            await raw.publish(CHANNEL, b"hello")
            await raw.publish(CHANNEL, b'{"v":"1","from":"x","kind":"flush"}')
            assert await announce(redis.url, FleetEvent("revoked"))  # as `virtual-mcp revoke` sends it
            assert await heard_b.next() == FleetEvent("list_changed", "g/s")
            assert await heard_b.next() == FleetEvent("revoked")
            assert await heard_a.next() == FleetEvent("revoked")  # the command's, not its own list change
            assert heard_a.events == [] and heard_b.events == []
            tg.cancel_scope.cancel()
    finally:
        for client in (one, two, raw):
            await client.aclose()


async def test_a_command_that_cannot_reach_redis_says_so() -> None:
    assert await announce(f"redis://127.0.0.1:{free_ports(1)[0]}/0", FleetEvent("revoked")) is None


async def test_a_silent_connection_is_given_up_and_made_again() -> None:
    """Redis stopped (SIGSTOP) rather than gone: the connection stays open and says nothing, as under a partition or
    a failover. The listener finds it silent, gives it up (counted, logged), and subscribes again once Redis
    answers, saying that events may have been missed."""
    status = FleetStatus()
    with redis_server() as server:
        async with listener(server.url, status, idle_ping=0.2) as (_, heard):
            server.process.send_signal(signal.SIGSTOP)
            try:
                with anyio.fail_after(10):
                    await status.until("events", degraded=True)
            finally:
                server.process.send_signal(signal.SIGCONT)
            with anyio.fail_after(15):
                await heard.subscribed.wait()
            assert heard.missed == 1 and not status.degraded("events")


async def test_a_broken_channel_is_made_again_and_says_events_may_be_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops under a listening replica and comes back on the same port: the replica counts the outage, logs it
    once, subscribes again, and calls `missed` so that it catches up (revocations from the database)."""
    metrics = Metrics()
    status = FleetStatus(metrics)
    with redis_server() as first, caplog.at_level(logging.WARNING, logger="virtual_mcp.fleet.status"):
        async with listener(first.url, status) as (events, heard):
            first.process.terminate()
            await anyio.to_thread.run_sync(first.process.wait)
            assert not await events.publish(FleetEvent("revoked"))  # said, not raised
            assert status.degraded("events")
            with redis_server(port=first.port):
                with anyio.fail_after(15):
                    await heard.subscribed.wait()
                assert heard.missed == 1 and not status.degraded("events")
    assert caplog.text.count("Redis unreachable for events") == 1
    assert "Redis reachable again for events" in caplog.text
    assert 'vmcp_fleet_degraded{part="events"} 0.0' in metrics.exposition().decode()

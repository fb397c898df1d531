"""Calls between replicas (virtual_mcp/fleet/calls.py) on a real Redis: the addressed replica serves the call and its
notes reach the asker; an asker whose request is cancelled makes the replica abandon the work; a replica that is not
there is found out within seconds; nothing on the channel is readable without the fleet's key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis as RedisClient

from tests.sensitive import mark
from tests.services import Redis
from virtual_mcp.fleet.calls import CHANNEL, Note, ReplicaCalls, ReplicaGone
from virtual_mcp.fleet.sealing import Sealer
from virtual_mcp.fleet.status import FleetStatus

KEY = Sealer([b"k" * 32], "calls")


@asynccontextmanager
async def two(url: str) -> AsyncIterator[tuple[ReplicaCalls, ReplicaCalls]]:
    async with RedisClient.from_url(url) as redis, anyio.create_task_group() as tg:
        pair = ReplicaCalls(redis, FleetStatus(), KEY), ReplicaCalls(redis, FleetStatus(), KEY)
        for calls in pair:
            ready = anyio.Event()
            tg.start_soon(calls.run, ready.set)
            await ready.wait()
        yield pair
        tg.cancel_scope.cancel()


async def test_a_call_is_served_by_the_replica_it_is_addressed_to_with_its_notes(redis: Redis) -> None:
    secret = "said-" + uuid.uuid4().hex
    mark(secret)
    async with two(redis.url) as (asker, holder), RedisClient.from_url(redis.url) as spy, spy.pubsub() as watch:
        await watch.subscribe(CHANNEL)

        async def handler(body: dict[str, Any], note: Note) -> dict[str, Any]:
            await note({"step": 1})
            return {"ok": body["text"].upper()}

        holder.serve(handler)
        asker.serve(lambda body, note: pytest.fail("a call reached a replica it was not addressed to"))
        notes: list[dict[str, Any]] = []

        async def on_note(body: dict[str, Any]) -> None:
            notes.append(body)

        assert await asker.call(holder.origin, {"text": secret}, on_note) == {"ok": secret.upper()}
        assert notes == [{"step": 1}]
        seen: list[bytes] = []
        with anyio.fail_after(5):
            while len(seen) < 3:  # the call, the note, the answer (and perhaps the holder saying it has it)
                got = await watch.get_message(ignore_subscribe_messages=True, timeout=1)
                if got is not None:
                    seen.append(got["data"])
        assert all(secret.encode() not in raw and secret.upper().encode() not in raw for raw in seen)


async def test_a_replica_that_is_not_there_is_found_out_in_seconds(redis: Redis) -> None:
    async with two(redis.url) as (asker, _):

        async def on_note(body: dict[str, Any]) -> None:
            pass

        with anyio.fail_after(10), pytest.raises(ReplicaGone):  # (its first word is awaited for 5 s)
            await asker.call("no-such-replica", {}, on_note)


async def test_an_abandoned_call_is_cancelled_where_it_is_served(redis: Redis) -> None:
    started, cancelled = anyio.Event(), anyio.Event()
    async with two(redis.url) as (asker, holder):

        async def handler(body: dict[str, Any], note: Note) -> dict[str, Any]:
            started.set()
            try:
                await anyio.Event().wait()
            finally:
                cancelled.set()
            return {}

        async def on_note(body: dict[str, Any]) -> None:
            pass

        holder.serve(handler)
        async with anyio.create_task_group() as tg:
            tg.start_soon(asker.call, holder.origin, {}, on_note)
            with anyio.fail_after(5):
                await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await cancelled.wait()


async def test_a_call_heard_twice_is_served_once_and_the_replica_serves_on(redis: Redis) -> None:
    """A sealed call republished on the channel (a replay by whoever can publish to Redis) is served once; the
    replica's listener survives it."""
    served = 0
    async with two(redis.url) as (asker, holder), RedisClient.from_url(redis.url) as spy, spy.pubsub() as watch:
        await watch.subscribe(CHANNEL)

        async def handler(body: dict[str, Any], note: Note) -> dict[str, Any]:
            nonlocal served
            served += 1
            return {"ok": served}

        async def on_note(body: dict[str, Any]) -> None:
            pass

        holder.serve(handler)
        assert await asker.call(holder.origin, {}, on_note) == {"ok": 1}
        with anyio.fail_after(5):
            while (got := await watch.get_message(ignore_subscribe_messages=True, timeout=1)) is None:
                pass
        replayed = got["data"]  # the call itself, the first message on the channel
        for _ in range(2):
            await spy.publish(CHANNEL, replayed)
        assert await asker.call(holder.origin, {}, on_note) == {"ok": 2}  # served on; the replays were not

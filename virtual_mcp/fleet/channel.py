"""One Redis pub/sub channel of the fleet, as a replica uses it: `publish` (best effort) and `run` (receive until
cancelled, subscribing again after any break).

Pub/sub keeps nothing for a subscriber that was away: whenever the subscription is made again after a break, the
receiver's `missed()` is called first so it can catch up by other means. A connection that died without a reset (a
partition, a failover) is found by its silence: after `idle_ping` seconds without a message it is pinged, and without
even the answer to that within another `idle_ping` it is given up and made again.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from virtual_mcp.fleet.status import FleetStatus

IDLE_PING = 5.0  # seconds without a message before the connection is checked
_DEADLINE = 2.0  # seconds for one Redis command
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


class Channel:
    def __init__(self, redis: Redis, status: FleetStatus, part: str, name: str, idle_ping: float = IDLE_PING) -> None:
        self._redis = redis
        self._status = status
        self._part = part
        self.name = name
        self._idle_ping = idle_ping
        self._subscribed = False

    async def publish(self, message: str) -> int | None:
        """How many subscribers Redis passed it to (0: nobody listens); None if it could not be sent."""
        try:
            with anyio.fail_after(_DEADLINE):
                heard = int(await self._redis.publish(self.name, message))
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed(self._part, exc)
            return None
        if self._subscribed:
            self._status.succeeded(self._part)  # (a blip that failed a publish is over)
        return heard

    async def run(
        self,
        handle: Callable[[bytes | str], None],
        missed: Callable[[], None] | None = None,
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Hand each message on the channel to `handle` as it comes. `missed()` after a break, before the first
        message of the new subscription; `subscribed()` each time the subscription stands."""
        pause = _FIRST_PAUSE
        broken = False
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    with anyio.fail_after(_DEADLINE):
                        await pubsub.subscribe(self.name)
                    self._subscribed = True
                    self._status.succeeded(self._part)
                    pause = _FIRST_PAUSE
                    if broken:
                        broken = False
                        if missed is not None:
                            missed()
                    if subscribed is not None:
                        subscribed()
                    await self._receive(pubsub, handle)
            except (RedisError, OSError, TimeoutError) as exc:
                self._status.failed(self._part, exc)
                broken = True
            self._subscribed = False
            await anyio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    async def _receive(self, pubsub: PubSub, handle: Callable[[bytes | str], None]) -> None:
        """Until the connection fails (or is found silent: TimeoutError)."""
        heard = anyio.current_time()
        pinged = False
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._idle_ping)
            if message is None:
                if pinged and anyio.current_time() - heard > 2 * self._idle_ping:
                    raise TimeoutError(f"no answer on {self.name} for {2 * self._idle_ping:g} s")
                await pubsub.ping()
                pinged = True
                continue
            heard, pinged = anyio.current_time(), False
            if message.get("type") == "message":  # (not the answer to a ping)
                handle(message["data"])

"""One-time ids over the fleet (Redis): whether an id (a `requestState`'s) is presented for the first time on any
replica. `SET NX` with the id's own expiry, keyed by a digest of the id.

Without Redis the answer is "cannot say" (None), and the caller relies on what its own process remembers: a state
could then be used once per replica while Redis is down, never more than once on one.
"""

from __future__ import annotations

import math
import time

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.sealing import digest
from virtual_mcp.fleet.status import FleetStatus

_DEADLINE = 1.0


class FleetOnce:
    def __init__(self, redis: Redis, status: FleetStatus) -> None:
        self._redis = redis
        self._status = status

    async def first(self, one_time: str, expires: float) -> bool | None:
        key = "vmcp:once:" + digest(one_time)
        ttl_ms = max(1, math.ceil((expires - time.time()) * 1000))
        try:
            with anyio.fail_after(_DEADLINE):
                taken = await self._redis.set(key, "1", nx=True, px=ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed("sessions", exc)
            return None
        self._status.succeeded("sessions")
        return bool(taken)

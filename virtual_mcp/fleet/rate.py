"""Request rates counted by the whole fleet: one token bucket per principal in Redis, so a caller whose requests a
load balancer spreads over N replicas gets the configured rate, not N times it.

The bucket is a Redis hash (`vmcp:rate:<digest of the subject>`: tokens left, when counted) updated by one script
that reads Redis's own clock, so replicas whose clocks differ count alike. It expires once it would have refilled.

Redis unreachable, or slower than `_DEADLINE`: the request is counted by this replica's own limiter (the one used
without Redis), the failure reported to the fleet's status; Redis is asked again after `_RETRY` seconds by one
request (the others meanwhile count locally), not on every request, so an outage costs callers no waiting but that
one request's, at most `_DEADLINE`, once a second.
"""

from __future__ import annotations

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.sealing import digest
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.inbound.rate_limit import RequestLimiter, too_many
from virtual_mcp.types import Principal

_PREFIX = "vmcp:rate:"
_DEADLINE = 0.25  # seconds for one check, before this replica counts alone
_RETRY = 1.0  # seconds after a failure before Redis is asked again
_BUCKET = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class FleetRequestLimiter:
    """`rate` requests per second sustained, up to `burst` at once, per principal, over every replica."""

    def __init__(self, redis: Redis, status: FleetStatus, rate: float, burst: int) -> None:
        self._script = redis.register_script(_BUCKET)
        self._status = status
        self._rate = rate
        self._burst = burst
        self._local = RequestLimiter(rate, burst)
        self._retry_at = 0.0

    async def admit(self, principal: Principal) -> None:
        now = anyio.current_time()
        if now < self._retry_at:
            await self._local.admit(principal)
            return
        if self._status.degraded("rate_limit"):
            self._retry_at = now + _RETRY  # this request probes Redis; the others count locally meanwhile
        try:
            with anyio.fail_after(_DEADLINE):
                allowed, tokens = await self._script(
                    keys=[_PREFIX + digest(principal.subject)], args=[self._rate, self._burst]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed("rate_limit", exc)
            self._retry_at = now + _RETRY
            await self._local.admit(principal)
            return
        self._retry_at = 0.0
        self._status.succeeded("rate_limit")
        if not int(allowed):
            raise too_many(self._rate, self._burst, (1.0 - float(tokens)) / self._rate)

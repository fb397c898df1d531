"""A per-key lock held across replicas (the token manager's `KeyedLocks`, outbound/token_manager.py), in Redis.

- Taken with `SET key token NX PX lease`: one holder at a time in the fleet, for at most the lease. Waiters ask
  again after a short, growing pause (at most `_MAX_PAUSE`); within one replica, waiters queue on a local lock first,
  so only one of them asks Redis.
- Released only by its holder: a script deletes the key only if it still holds that holder's value, so a holder
  whose lease ran out never releases the next holder's lock. The value names the holder for an operator
  (`host:pid:random`); the random part makes it unique.
- While the holder works, the lease is extended (every third of it), so a slow provider does not let a second
  replica in; a holder that stops (crashed, paused) loses the lock when its lease runs out.
- Redis unreachable: the lock is the replica's own (`InProcessLocks`), the outage reported to the fleet's status
  (fleet/status.py: logged once, counted). The token manager's write-ahead marks in the database, and the
  compare-and-set on each token set's version, still keep a refresh token from being sent twice and a late answer
  from overwriting a newer set.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.outbound.token_manager import InProcessLocks

logger = logging.getLogger(__name__)
_PREFIX = "vmcp:lock:"
_HOLDER = f"{socket.gethostname()}:{os.getpid()}"
_FIRST_PAUSE = 0.005
_MAX_PAUSE = 0.1
_DEADLINE = 1.0  # seconds for one Redis command before the lock is this replica's own
_RETRY = 1.0  # seconds after a failure before Redis is asked again
# Deletes the lock only if it is still this holder's; extends it the same way.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class RedisLocks:
    def __init__(self, redis: Redis, status: FleetStatus, lease_seconds: float = 30.0) -> None:
        self._redis = redis
        self._lease_ms = max(int(lease_seconds * 1000), 100)
        self._local = InProcessLocks()
        self._status = status
        self._retry_at = 0.0  # before this (anyio's clock), Redis is not asked: it failed a moment ago

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        async with self._local.lock(key):
            token = f"{_HOLDER}:{secrets.token_hex(12)}"
            name = _PREFIX + key
            if not await self._acquire(name, token):
                yield  # Redis is down: this replica's own lock (held above) is all there is
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep, name, token)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await self._release(name, token)

    async def _acquire(self, name: str, token: str) -> bool:
        """True once held in Redis; False if Redis cannot be reached (the caller then relies on the local lock).
        After a failure Redis is not asked again for `_RETRY` seconds, so waiters queued behind an outage do not
        each wait out its timeout."""
        if anyio.current_time() < self._retry_at:
            return False
        pause = _FIRST_PAUSE
        while True:
            try:
                with anyio.fail_after(_DEADLINE):
                    taken = await self._redis.set(name, token, nx=True, px=self._lease_ms)
                if taken:
                    self._status.succeeded("locks")
                    return True
            except (RedisError, OSError, TimeoutError) as exc:
                self._degrade(exc)
                return False
            await anyio.sleep(pause)  # another replica holds it: ask again shortly
            pause = min(pause * 2, _MAX_PAUSE)

    async def _keep(self, name: str, token: str) -> None:
        """Extend the lease while the holder works."""
        while True:
            await anyio.sleep(self._lease_ms / 3000)
            try:
                with anyio.fail_after(_DEADLINE):
                    extended = await self._redis.eval(_EXTEND, 1, name, token, str(self._lease_ms))
                if not extended:
                    logger.warning("the lock %s was lost (its lease ran out)", name)
                    return
            except (RedisError, OSError, TimeoutError) as exc:
                self._degrade(exc)
                return

    async def _release(self, name: str, token: str) -> None:
        try:
            with anyio.fail_after(_DEADLINE):
                await self._redis.eval(_RELEASE, 1, name, token)
        except (RedisError, OSError, TimeoutError) as exc:
            self._degrade(exc)  # the lease lets the next holder in when it runs out

    def _degrade(self, exc: BaseException) -> None:
        self._retry_at = anyio.current_time() + _RETRY
        self._status.failed("locks", exc)

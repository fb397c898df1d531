"""Pending consent records (tickets, authorization flows) over the fleet (Redis), so that each step of a browser's
consent flow (the link, the sign-in form, the provider's callback) may land on any replica.

Each entry is `vmcp:pending:<table>:<digest of its key>`: its key (a ticket or `state`, credentials while they live),
owner and value sealed (fleet/sealing.py), expiring with the entry. Each owner's entries are indexed in a sorted set
by expiry, and an owner holds at most `per_owner` (past it their oldest goes, in the same script). Taking an entry
(`pop`) is atomic (GETDEL): a ticket or a state is spent once over the fleet.

While Redis cannot be reached, entries are made in this replica's own table (`fallback`), and looked for in both: a
flow started during an outage completes if its steps come back to the same replica.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.sealing import Sealer, digest
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.outbound.pending import LocalPending, Record

logger = logging.getLogger(__name__)

PART = "sessions"
_DEADLINE = 1.0

# KEYS: entry, owner index. ARGV: member, sealed value, ttl ms, now ms, per owner, entry key prefix.
_PUT = """
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[4])
redis.call('zrem', KEYS[2], ARGV[1])
local excess = redis.call('zcard', KEYS[2]) - tonumber(ARGV[5]) + 1
if excess > 0 then
  local oldest = redis.call('zpopmin', KEYS[2], excess)
  for i = 1, #oldest, 2 do redis.call('del', ARGV[6] .. oldest[i]) end
end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('zadd', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
redis.call('pexpire', KEYS[2], ARGV[3])
return 1
"""


def _text(member: Any) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


class RedisPending:
    def __init__(
        self, redis: Redis, status: FleetStatus, sealer: Sealer, table: str, per_owner: int, fallback: LocalPending
    ) -> None:
        self._redis = redis
        self._status = status
        self._sealer = sealer
        self._prefix = f"vmcp:pending:{table}:"
        self._per_owner = per_owner
        self._fallback = fallback
        self._put = redis.register_script(_PUT)

    def _entry(self, key: str) -> str:
        return self._prefix + digest(key)

    def _index(self, owner: str) -> str:
        return self._prefix + "owner:" + digest(owner)

    def _seal(self, key: str, owner: str, value: Record) -> str:
        return self._sealer.seal(json.dumps({"k": key, "o": owner, "v": value}, separators=(",", ":")).encode())

    def _open(self, sealed: Any, key: str | None = None) -> tuple[str, str, Record] | None:
        text = sealed.decode() if isinstance(sealed, bytes) else sealed
        opened = self._sealer.open(text) if isinstance(text, str) else None
        if opened is None:
            return None
        try:
            body = json.loads(opened)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("v"), dict) or (key is not None and body["k"] != key):
            return None
        return str(body["k"]), str(body["o"]), body["v"]

    def _failed(self, exc: BaseException) -> None:
        self._status.failed(PART, exc)

    async def put(self, key: str, owner: str, value: Record, ttl: float) -> None:
        ttl_ms = max(1, math.ceil(ttl * 1000))
        now_ms = int(time.time() * 1000)
        args: list[str | int] = [
            digest(key),
            self._seal(key, owner, value),
            ttl_ms,
            now_ms,
            self._per_owner,
            self._prefix,
        ]
        try:
            with anyio.fail_after(_DEADLINE):
                await self._put(keys=[self._entry(key), self._index(owner)], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            await self._fallback.put(key, owner, value, ttl)
            return
        self._status.succeeded(PART)
        await self._fallback.pop(key)  # (an older copy made during an outage)

    async def replace(self, key: str, value: Record) -> None:
        try:
            with anyio.fail_after(_DEADLINE):
                found = self._open(await self._redis.get(self._entry(key)), key)
                if found is not None:
                    sealed = self._seal(key, found[1], value)
                    await self._redis.set(self._entry(key), sealed, keepttl=True, xx=True)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
        await self._fallback.replace(key, value)

    async def get(self, key: str) -> Record | None:
        local = await self._fallback.get(key)
        if local is not None:
            return local
        try:
            with anyio.fail_after(_DEADLINE):
                found = self._open(await self._redis.get(self._entry(key)), key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        return found[2] if found is not None else None

    async def pop(self, key: str) -> Record | None:
        local = await self._fallback.pop(key)
        if local is not None:
            return local
        try:
            with anyio.fail_after(_DEADLINE):
                found = self._open(await self._redis.getdel(self._entry(key)), key)
                if found is not None:
                    await self._redis.zrem(self._index(found[1]), digest(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        return found[2] if found is not None else None

    async def owned(self, owner: str) -> list[tuple[str, Record]]:
        local = await self._fallback.owned(owner)
        try:
            with anyio.fail_after(_DEADLINE):
                members = await self._redis.zrangebyscore(self._index(owner), int(time.time() * 1000), "+inf")
                values = await self._redis.mget([self._prefix + _text(m) for m in members]) if members else []
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return local
        shared = [found for raw in values if raw is not None and (found := self._open(raw)) is not None]
        return local + [(key, value) for key, entry_owner, value in shared if entry_owner == owner]

    async def drop_owner(self, owner: str) -> None:
        await self._fallback.drop_owner(owner)
        try:
            with anyio.fail_after(_DEADLINE):
                members = await self._redis.zrange(self._index(owner), 0, -1)
                async with self._redis.pipeline(transaction=True) as pipe:
                    for member in members:
                        pipe.delete(self._prefix + _text(member))
                    pipe.delete(self._index(owner))
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

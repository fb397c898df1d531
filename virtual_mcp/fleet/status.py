"""Whether this replica reaches the fleet's Redis, as each part that uses it finds it (`locks`: the token refresh
lock; `events`: revocation and catalog events; `rate_limit`: the request counters; `sessions`: client sessions;
`upstream`: backend sessions held as one).

A part that cannot reach Redis falls back to this replica's own behaviour (see each part) and says so here: one
warning when it goes down and one when it comes back (never one per request), `vmcp_fleet_redis_errors_total{part}`
counts every failure, `vmcp_fleet_degraded{part}` is 1 while it is down, and `/readyz` reports it (the replica stays
ready: it serves correctly on its own).
"""

from __future__ import annotations

import logging

import anyio
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.metrics import Metrics

logger = logging.getLogger(__name__)

PARTS = ("locks", "events", "rate_limit", "sessions", "upstream")
# Readiness answers within a probe's patience even while Redis drops packets: a slower ping is an unreachable Redis.
_PING_DEADLINE = 0.25
_FALLBACK = {
    "locks": "token refresh locks are this replica's own (the database's write-ahead marks still keep a refresh "
    "token from being sent twice)",
    "events": "revocations reach this replica by the database poll, and backends' list changes on other replicas "
    "by the catalog's expiry",
    "rate_limit": "request rates are counted by this replica alone",
    "sessions": "2025-11-25 client sessions are this replica's own: one opened elsewhere is answered 404 here (its "
    "client opens a new one)",
    "upstream": "backend sessions are this replica's own: a 2025-11-25 backend sees one session per replica for a "
    "principal, and a session shared before is left to the backend's own expiry",
}


class FleetStatus:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._down: dict[str, str] = {}  # part -> the failure's kind
        self._change: anyio.Event | None = None  # set at the next change of any part (made when first awaited)
        self._errors: Counter | None = None
        self._metrics = metrics
        if metrics is not None:
            self._errors = Counter(
                "vmcp_fleet_redis_errors_total",
                "failed Redis operations by part (locks, events, rate_limit, sessions, upstream); the part then runs "
                "on this replica alone",
                ["part"],
                registry=metrics.registry,
            )
            metrics.gauge(
                "vmcp_fleet_degraded",
                "1 while a part (locks, events, rate_limit, sessions, upstream) cannot reach Redis and runs on this "
                "replica alone",
                lambda: {(part,): float(part in self._down) for part in PARTS},
                labels=("part",),
            )

    def failed(self, part: str, exc: BaseException) -> None:
        """`part` could not reach Redis (`exc`): counted; logged if it was up."""
        if self._errors is not None and self._metrics is not None:
            self._metrics.child(self._errors, part).inc()
        if part not in self._down:
            self._down[part] = type(exc).__name__
            logger.warning("Redis unreachable for %s (%s): %s", part, type(exc).__name__, _FALLBACK[part])
            self._changed()

    def succeeded(self, part: str) -> None:
        """`part` reached Redis: logged if it was down."""
        if self._down.pop(part, None) is not None:
            logger.warning("Redis reachable again for %s: it is the fleet's again", part)
            self._changed()

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def until(self, part: str, degraded: bool) -> None:
        """Wait until `part` is (or is no longer) degraded."""
        while self.degraded(part) != degraded:
            if self._change is None:
                self._change = anyio.Event()
            await self._change.wait()

    def degraded(self, part: str) -> bool:
        return part in self._down

    def problem(self) -> str | None:
        """For `/readyz`: which parts run on this replica alone, and why; None while every part reaches Redis."""
        if not self._down:
            return None
        return "degraded: Redis unreachable (" + ", ".join(f"{p}: {why}" for p, why in sorted(self._down.items())) + ")"


async def redis_health(redis: Redis, status: FleetStatus) -> dict[str, str | None]:
    """For `/readyz`: {"redis": None} while Redis answers and every part reaches it, else what runs alone and why.
    (A part that failed earlier and has not asked since is not held against a Redis that answers now: the lock asks
    afresh at each refresh.)"""
    try:
        with anyio.fail_after(_PING_DEADLINE):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return {"redis": f"degraded: Redis unreachable ({type(exc).__name__}); each replica runs on its own"}
    status.succeeded("locks")
    return {"redis": status.problem()}

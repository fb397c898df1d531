"""How fast one caller may send requests: a token bucket per principal, so one busy or hostile caller is slowed
down alone and everyone else keeps being served. `RequestLimiter` counts in this process; replicas that share Redis
count together (fleet/rate.py), behind the same `Admission` Protocol."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from virtual_mcp.errors import TooManyRequests
from virtual_mcp.types import Principal


class Admission(Protocol):
    async def admit(self, principal: Principal) -> None:
        """Take one request from the principal's allowance, or raise TooManyRequests saying when to retry."""
        ...


def too_many(rate: float, burst: float, wait: float) -> TooManyRequests:
    return TooManyRequests(
        f"Too many requests: at most {rate:g} per second (bursts of {burst:g}) for one caller; retry in {wait:.2f} s",
        retry_after=wait,
    )


class RequestLimiter:
    """`rate` requests per second sustained, up to `burst` at once, per principal (by subject)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_tracked: int = 100_000
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_tracked = max_tracked
        # subject -> (tokens left, when counted). A bucket refilled to the brim is the same as no bucket.
        self._buckets: dict[str, tuple[float, float]] = {}

    async def admit(self, principal: Principal) -> None:
        """Take one request from the principal's bucket, or raise TooManyRequests saying when to retry."""
        now = self._clock()
        subject = principal.subject
        tokens, then = self._buckets.get(subject, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[subject] = (tokens, now)
            raise too_many(self._rate, self._burst, (1.0 - tokens) / self._rate)
        self._buckets[subject] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_tracked:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (the memory of callers who stopped), so the table stays bounded."""
        for subject, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self._rate >= self._burst:
                del self._buckets[subject]

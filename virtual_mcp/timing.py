"""Per-request timing of the gateway's phases (token lookup, lock wait, vault, provider calls, upstream).

A request opens a `Timings` with `measure_request()`; code anywhere below adds to it with `phase(name)`. The
numbers feed Server-Timing and metrics; outside a request, measuring is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)  # name -> seconds, summed over occurrences

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds


_CURRENT: ContextVar[Timings | None] = ContextVar("virtual_mcp_timings", default=None)


@contextmanager
def measure_request() -> Iterator[Timings]:
    timings = Timings()
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, time.perf_counter() - start)

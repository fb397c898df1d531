"""Per-request timing of the gateway's phases, reported as a `Server-Timing` header.

A request opens a `Timings` (`measure_request()`, or the `RequestScope` layer of the MCP endpoints); code anywhere below
adds to it with `phase(name)`. A handler that runs in another task binds the request's `Timings` with `use()`.
Outside a request, measuring is a no-op.

Phases, and what each covers:

- `auth`: inbound authentication (token, JWT or local identity) at the front door.
- `policy`: header overrides and endpoint access at the front door; in a handler, the per-tool (or per-server)
  decision, with resolving a tool's name to its backend.
- `token_lookup`, `token_lock_wait`, `token_provider`: outbound OAuth tokens (cache read, per-key lock, provider
  call); `vault`: reading or writing sealed tokens.
- `upstream`: waiting on backends: the forwarded call; a backend's tool list the catalog has to fetch (also when
  resolving a `tools/call`); and for `tools/list`, getting the backends' tool lists, from the catalog cache when it
  is fresh (so a `tools/list` always reports it, if only for a few microseconds).

Phases nest (`vault` inside `token_lookup`, token phases inside `upstream` when a `tools/list` fetches credentials)
and run concurrently (a `tools/list` fans out to every backend at once), so raw sums would count the same instant
several times. `Timings.phases` keeps those raw (inclusive) sums, for metrics. `Server-Timing` instead attributes
each instant of the request's wall time to at most one phase, the innermost: of the phases running at that instant,
the one that started last. So a token fetched inside `upstream` counts as token time and not also as upstream time,
and the reported phases never add up to more than `total` (the time from the request's arrival to the moment the
header is written). What is left over is the gateway's and the SDK's own work (parsing, routing, serialising).

Work a request starts in the background (a catalog refresh, a token refresh) carries that request's `Timings`
along; it only counts for the part of it that happens before the header is written.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

# Spans kept per request for the exclusive attribution; past this, phases are still summed but not attributed
# (the header then under-reports, never over-reports).
MAX_SPANS = 256
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a Server-Timing metric name


@dataclass(slots=True)
class _Span:
    name: str
    start: float
    end: float | None = None


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)  # name -> seconds, summed over occurrences (inclusive)
    started: float = field(default_factory=time.perf_counter)
    _spans: list[_Span] = field(default_factory=list, repr=False)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def _begin(self, name: str, start: float) -> _Span | None:
        if len(self._spans) >= MAX_SPANS:
            return None
        span = _Span(name, start)
        self._spans.append(span)
        return span

    def exclusive(self, now: float | None = None) -> dict[str, float]:
        """Seconds per phase up to `now`, each instant counted once, for the innermost phase running then.

        A phase still running at `now` counts up to `now`; one that started after `now` is left out. Phases are
        listed in the order they started; the values add up to at most `now - started`.
        """
        now = time.perf_counter() if now is None else now
        out: dict[str, float] = {}
        edges: list[tuple[float, int, int]] = []  # (time, 0 = end / 1 = start, span index)
        for i, span in enumerate(self._spans):
            start = max(span.start, self.started)
            end = now if span.end is None else min(span.end, now)
            if start > now:
                continue
            out.setdefault(span.name, 0.0)
            if end > start:
                edges.append((start, 1, i))
                edges.append((end, 0, i))
        edges.sort()
        running: list[tuple[float, int]] = []  # max-heap on (start, index): the last started is the innermost
        ended: set[int] = set()
        previous = self.started
        for moment, is_start, i in edges:
            if moment > previous:
                while running and -running[0][1] in ended:
                    heapq.heappop(running)
                if running:
                    name = self._spans[-running[0][1]].name
                    out[name] += moment - previous
            previous = moment
            if is_start:
                heapq.heappush(running, (-self._spans[i].start, -i))
            else:
                ended.add(i)
        return out

    def server_timing(self, now: float | None = None) -> str:
        """The `Server-Timing` header value: each phase (see `exclusive`), then `total`; durations in ms."""
        now = time.perf_counter() if now is None else now
        # Whole microseconds: phases rounded down, the total up, so the sum stays within the total when printed.
        entries = [
            f"{name};dur={_ms(math.floor(seconds * 1e6))}"
            for name, seconds in self.exclusive(now).items()
            if _TOKEN.fullmatch(name) and name != "total"
        ]
        entries.append(f"total;dur={_ms(math.ceil(max(now - self.started, 0.0) * 1e6))}")
        return ", ".join(entries)


def _ms(microseconds: int) -> str:
    microseconds = max(microseconds, 0)
    return f"{microseconds // 1000}.{microseconds % 1000:03d}"


_CURRENT: ContextVar[Timings | None] = ContextVar("virtual_mcp_timings", default=None)


@contextmanager
def measure_request() -> Iterator[Timings]:
    timings = Timings()
    with use(timings):
        yield timings


@contextmanager
def use(timings: Timings | None) -> Iterator[None]:
    """Measure into `timings` in this task (a handler the SDK runs apart from its HTTP request), or not at all."""
    token = _CURRENT.set(timings)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    start = time.perf_counter()
    span = timings._begin(name, start)
    try:
        yield
    finally:
        end = time.perf_counter()
        if span is not None:
            span.end = end
        timings.add(name, end - start)

"""Phase timing: raw sums for metrics, and a Server-Timing value whose phases never add up to more than `total`."""

from __future__ import annotations

import re
from contextlib import ExitStack
from decimal import Decimal
from types import SimpleNamespace

import anyio
import pytest

from virtual_mcp import timing
from virtual_mcp.timing import MAX_SPANS, Timings, measure_request, phase, use


class Clock:
    """A perf_counter moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake))
    return fake


def parse(value: str) -> list[tuple[str, Decimal]]:
    """A Server-Timing value as (name, dur in ms), checking its grammar on the way."""
    entries = []
    for entry in value.split(", "):
        match = re.fullmatch(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+);dur=(\d+\.\d{3})", entry)
        assert match, entry
        entries.append((match[1], Decimal(match[2])))
    return entries


def test_phase_outside_a_request_measures_nothing() -> None:
    with phase("upstream"):
        pass
    timings = Timings()
    with use(timings), use(None), phase("upstream"):
        pass
    assert timings.phases == {}
    assert parse(timings.server_timing())[-1][0] == "total"


def test_nested_phases_count_each_instant_once(clock: Clock) -> None:
    timings = Timings(started=0.0)
    with use(timings):
        with phase("auth"):
            clock.now = 1.0
        clock.now = 2.0
        with phase("upstream"):
            clock.now = 3.0
            with phase("token_lookup"):
                clock.now = 3.5
                with phase("vault"):
                    clock.now = 4.5
                clock.now = 5.0
            clock.now = 10.0
    # Raw sums, for metrics: nested time is in both.
    assert timings.phases == {"auth": 1.0, "upstream": 8.0, "token_lookup": 2.0, "vault": 1.0}
    # Exclusive: the innermost phase owns each instant; 2.0 s belong to no phase.
    assert timings.exclusive(now=12.0) == {"auth": 1.0, "upstream": 6.0, "token_lookup": 1.0, "vault": 1.0}
    assert timings.server_timing(now=12.0) == (
        "auth;dur=1000.000, upstream;dur=6000.000, token_lookup;dur=1000.000, vault;dur=1000.000, total;dur=12000.000"
    )


def test_concurrent_phases_never_add_up_to_more_than_the_wall_time(clock: Clock) -> None:
    """Two backends asked at once: 8 s of raw phase time in 6 s of request; the header says 5 of the 6."""
    timings = Timings(started=0.0)
    with use(timings), ExitStack() as first, ExitStack() as second:
        clock.now = 1.0
        first.enter_context(phase("upstream"))
        clock.now = 2.0
        second.enter_context(phase("token_provider"))
        clock.now = 5.0
        first.close()
        clock.now = 6.0
        second.close()
    assert timings.phases == {"upstream": 4.0, "token_provider": 4.0}
    assert timings.exclusive(now=6.0) == {"upstream": 1.0, "token_provider": 4.0}
    assert sum(timings.exclusive(now=6.0).values()) <= 6.0


def test_a_running_phase_counts_up_to_now_and_a_later_one_not_at_all(clock: Clock) -> None:
    timings = Timings(started=0.0)
    with use(timings), ExitStack() as running:
        clock.now = 2.0
        running.enter_context(phase("upstream"))
        clock.now = 6.0
        with phase("vault"):
            clock.now = 7.0
        # Asked about the moment 5.0: upstream has run 3 s, vault had not started.
        assert timings.server_timing(now=5.0) == "upstream;dur=3000.000, total;dur=5000.000"


def test_printed_durations_stay_within_the_printed_total(clock: Clock) -> None:
    """Rounding to microseconds never makes the phases exceed the total, whatever the fractions."""
    timings = Timings(started=0.0)
    with use(timings):
        for i in range(40):
            with phase(f"p{i % 7}"):
                clock.now += 0.000_000_9 + i * 0.000_013_37
            clock.now += 1e-9
    value = timings.server_timing(now=clock.now)
    entries = parse(value)
    assert entries[-1][0] == "total" and [n for n, _ in entries].count("total") == 1
    assert sum(d for _, d in entries[:-1]) <= entries[-1][1]
    assert all(d >= 0 for _, d in entries)


def test_names_that_are_not_tokens_are_left_out_of_the_header(clock: Clock) -> None:
    timings = Timings(started=0.0)
    with use(timings), phase("not a token"), phase("total"), phase("ok"):
        clock.now = 1.0
    assert [name for name, _ in parse(timings.server_timing(now=1.0))] == ["ok", "total"]


def test_spans_past_the_cap_are_summed_but_not_attributed(clock: Clock) -> None:
    timings = Timings(started=0.0)
    with use(timings):
        for _ in range(MAX_SPANS + 10):
            with phase("vault"):
                clock.now += 1.0
    assert timings.phases["vault"] == MAX_SPANS + 10
    assert timings.exclusive(now=clock.now) == {"vault": float(MAX_SPANS)}


async def test_a_task_started_inside_a_request_measures_into_it() -> None:
    with measure_request() as timings:

        async def backend() -> None:
            with phase("upstream"):
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(backend)
            tg.start_soon(backend)
    assert set(timings.phases) == {"upstream"}
    exclusive = timings.exclusive()
    assert set(exclusive) == {"upstream"} and 0 <= exclusive["upstream"] <= timings.phases["upstream"]


def test_use_restores_the_previous_timings() -> None:
    outer, inner = Timings(), Timings()
    with use(outer):
        with use(inner), phase("vault"):
            pass
        with phase("auth"):
            pass
    assert set(inner.phases) == {"vault"} and set(outer.phases) == {"auth"}

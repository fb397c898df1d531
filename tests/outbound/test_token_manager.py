"""The token manager's concurrency rules, driven through its `obtain` seam with a hand-held clock.

(The provider is replaced by a counting coroutine here; end-to-end tests against a real authorization server live
in tests/oauth/.)"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest

from virtual_mcp.outbound.oauth_client import TerminalGrantError, TokenSet, TransientTokenError
from virtual_mcp.outbound.token_manager import InProcessLocks, MemoryTokenCache, TokenManager

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Provider:
    """Counts token requests and how many are in flight at once; can be slowed down or made to fail."""

    def __init__(self, clock: Clock, lifetime: float | None = 100.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.failures: list[Exception] = []

    async def obtain(self, current: TokenSet | None) -> TokenSet:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                raise self.failures.pop(0)
            return TokenSet(f"token-{self.calls}", self.clock.now, self.lifetime, f"refresh-{self.calls}")
        finally:
            self.in_flight -= 1


def manager(
    clock: Clock, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None] | None = None
) -> TokenManager:
    return TokenManager(MemoryTokenCache(), InProcessLocks(), spawn, clock=clock, backoff_seconds=0.001)


async def test_fifty_cold_callers_cause_one_token_request() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    provider.gate = anyio.Event()  # the provider is slow: everyone piles up behind the first request
    results: list[str] = []

    async def caller() -> None:
        results.append((await tokens.token("k", provider.obtain)).access_token)

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(caller)
        with anyio.fail_after(5):
            await provider.entered.wait()
        provider.gate.set()
    assert provider.calls == 1 and results == ["token-1"] * 50


async def test_fifty_callers_past_eighty_percent_cause_one_background_refresh() -> None:
    clock = Clock()
    provider = Provider(clock)
    async with anyio.create_task_group() as tg:

        def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
            tg.start_soon(fn)

        tokens = manager(clock, spawn)
        assert (await tokens.token("k", provider.obtain)).access_token == "token-1"
        clock.now += 81  # past 80% of a 100 s lifetime, not expired
        provider.gate = anyio.Event()
        provider.entered = anyio.Event()
        seen = [(await tokens.token("k", provider.obtain)).access_token for _ in range(50)]
        # Everyone is served the still-valid token at once; exactly one refresh runs in the background.
        assert seen == ["token-1"] * 50
        with anyio.fail_after(5):
            await provider.entered.wait()
        provider.gate.set()
    assert provider.calls == 2 and provider.max_in_flight == 1
    assert (await tokens.token("k", provider.obtain)).access_token == "token-2"


async def test_expired_token_is_renewed_once_for_concurrent_callers() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    await tokens.token("k", provider.obtain)
    clock.now += 150
    provider.gate = anyio.Event()
    provider.entered = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(tokens.token, "k", provider.obtain)
        with anyio.fail_after(5):
            await provider.entered.wait()
        provider.gate.set()
    assert provider.calls == 2 and provider.max_in_flight == 1


async def test_transient_errors_are_retried_terminal_ones_are_not() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    provider.failures = [TransientTokenError("HTTP 503"), TransientTokenError("HTTP 429")]
    assert (await tokens.token("a", provider.obtain)).access_token == "token-3"
    provider.failures = [TransientTokenError("HTTP 500")] * 3
    with pytest.raises(TransientTokenError):
        await tokens.token("b", provider.obtain)
    provider.failures = [TerminalGrantError("invalid_grant")]
    calls = provider.calls
    with pytest.raises(TerminalGrantError):
        await tokens.token("c", provider.obtain)
    assert provider.calls == calls + 1 and provider.max_in_flight == 1


async def test_a_token_without_expires_in_gets_the_default_lifetime() -> None:
    clock = Clock()
    provider = Provider(clock, lifetime=None)
    tokens = manager(clock)  # default lifetime 300 s: refresh due at 240 s
    await tokens.token("k", provider.obtain)
    clock.now += 200
    assert (await tokens.token("k", provider.obtain)).access_token == "token-1"
    clock.now += 200  # 400 s: expired by the default lifetime
    assert (await tokens.token("k", provider.obtain)).access_token == "token-2"


async def test_keys_do_not_share_locks_or_tokens() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    first = await tokens.token("server-a", provider.obtain)
    second = await tokens.token("server-b", provider.obtain)
    assert first.access_token != second.access_token and provider.calls == 2


async def test_token_phases_are_measured_inside_a_request() -> None:
    from virtual_mcp.timing import measure_request

    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    with measure_request() as timings:
        await tokens.token("k", provider.obtain)
    assert {"token_lookup", "token_lock_wait", "token_provider"} <= set(timings.phases)
    assert all(seconds >= 0 for seconds in timings.phases.values())
    with measure_request() as warm:
        await tokens.token("k", provider.obtain)
    assert set(warm.phases) == {"token_lookup"}  # a cached token touches nothing else

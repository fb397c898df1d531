"""The token manager's concurrency rules, driven through its `obtain` seam with a hand-held clock.

(The provider is replaced by a counting coroutine here; end-to-end tests against a real authorization server live
in tests/oauth/.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from virtual_mcp.outbound.oauth_client import RefreshInDoubt, TerminalGrantError, TokenSet, TransientTokenError
from virtual_mcp.outbound.token_manager import InProcessLocks, MemoryTokenCache, Spawn, TokenManager

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
        self.last: TokenSet | None = None
        self.refresh_tokens_seen: list[str | None] = []

    async def obtain(self, current: TokenSet | None) -> TokenSet:
        self.calls += 1
        n = self.calls  # named for the request, whenever its answer comes
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        self.refresh_tokens_seen.append(current.refresh_token if current else None)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                raise self.failures.pop(0)
            self.last = TokenSet(f"token-{n}", self.clock.now, self.lifetime, f"refresh-{n}")
            return self.last
        finally:
            self.in_flight -= 1


def manager(
    clock: Clock,
    spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None] | None = None,
    cache: MemoryTokenCache | None = None,
    **options: Any,
) -> TokenManager:
    return TokenManager(
        cache or MemoryTokenCache(), InProcessLocks(), spawn, clock=clock, backoff_seconds=0.001, **options
    )


def spawner(tg: anyio.abc.TaskGroup) -> Spawn:
    def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        tg.start_soon(fn)

    return spawn


async def until(predicate: Callable[[], Awaitable[bool] | bool], seconds: float = 5) -> None:
    """Yield to other tasks until `predicate` holds (no sleeping; fails after `seconds`)."""
    with anyio.fail_after(seconds):
        while True:
            held = predicate()
            if held if isinstance(held, bool) else await held:
                return
            await anyio.lowlevel.checkpoint()


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
        await until(lambda: is_stored(tokens, "k", provider.last))
        tg.cancel_scope.cancel()  # the refresh timer runs for as long as its task group
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


async def is_stored(tokens: TokenManager, key: str, token: TokenSet | None) -> bool:
    return token is not None and await tokens.peek(key) == token


async def test_the_timer_refreshes_a_hot_token_at_eighty_percent_without_a_request() -> None:
    clock = Clock()
    provider = Provider(clock)
    async with anyio.create_task_group() as tg:
        tokens = manager(clock, spawner(tg))
        await tokens.token("a", provider.obtain)
        await tokens.token("b", provider.obtain)
        clock.now += 79
        tokens.wake()
        await anyio.wait_all_tasks_blocked()
        assert provider.calls == 2  # nothing due yet
        clock.now += 2  # 81%: both due
        tokens.wake()
        await until(lambda: provider.calls == 4)
        assert sorted(provider.refresh_tokens_seen[2:], key=str) == ["refresh-1", "refresh-2"]
        await until(lambda: is_stored(tokens, "b", provider.last) or is_stored(tokens, "a", provider.last))
        tg.cancel_scope.cancel()


async def test_the_timer_leaves_tokens_nobody_used_lately() -> None:
    clock = Clock()
    provider = Provider(clock, lifetime=3600)
    async with anyio.create_task_group() as tg:
        tokens = manager(clock, spawner(tg), hot_seconds=600)
        await tokens.token("k", provider.obtain)
        clock.now += 0.81 * 3600  # due, but unused for longer than 600 s
        tokens.wake()
        await anyio.wait_all_tasks_blocked()
        assert provider.calls == 1
        tg.cancel_scope.cancel()


async def test_a_refresh_is_marked_before_the_refresh_token_leaves_and_another_process_drops_it() -> None:
    """The write-ahead mark: while a refresh is in flight the store holds the old set marked with this manager's
    id. A second manager on the same store (the next process after a crash) finds the mark, serves the access token
    while it is valid without waiting (a mark may as well be a refresh under way on another replica), never presents
    that refresh token, and once a renewal is due settles the record and obtains without a refresh token."""
    clock = Clock()
    provider = Provider(clock)
    shared = MemoryTokenCache()
    first = manager(clock, cache=shared)
    await first.token("k", provider.obtain)
    clock.now += 150  # expired: the next request refreshes
    provider.gate = anyio.Event()
    provider.entered = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.token, "k", provider.obtain)
        with anyio.fail_after(5):
            await provider.entered.wait()
        marked = await shared.get("k")
        assert marked is not None and marked.refreshing_by == first.instance and marked.refresh_token == "refresh-1"
        tg.cancel_scope.cancel()  # the "crash": shielded, the provider call itself carries on...
        provider.gate.set()
    # ...but a process that died would not have written its result. Put the store back as the crash left it.
    assert marked is not None
    await shared.set("k", replace(marked, version=None))  # unconditionally
    clock.now = START + 10  # pretend the stored set is still valid for the next process
    next_process = manager(clock, cache=shared)
    calls = provider.calls
    seen = await next_process.token("k", provider.obtain)
    assert seen.access_token == "token-1" and provider.calls == calls  # served as it is, nothing sent
    clock.now += 150  # expired: the record is settled under the lock, then obtain decides, without a refresh token
    provider.gate = None
    assert (await next_process.token("k", provider.obtain)).access_token == f"token-{calls + 1}"
    assert provider.refresh_tokens_seen[-1] is None
    assert provider.refresh_tokens_seen.count("refresh-1") == 1  # the marked refresh token was sent once, ever
    stored = await shared.get("k")
    assert stored is not None and stored.refreshing_by is None  # settled


async def test_a_refresh_without_an_answer_is_not_retried_and_its_refresh_token_is_dropped() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    await tokens.token("k", provider.obtain)
    clock.now += 90  # past 80%, still valid: the refresh is in doubt, the old token serves on
    provider.failures = [RefreshInDoubt("no answer")]
    async with anyio.create_task_group() as tg:
        tokens.attach(spawner(tg))
        assert (await tokens.token("k", provider.obtain)).access_token == "token-1"
        await until(lambda: lost(tokens, "k"))
        tg.cancel_scope.cancel()
    assert provider.calls == 2  # not retried
    assert (await tokens.token("k", provider.obtain)).access_token == "token-1"  # served out, no new attempt
    assert provider.calls == 2
    clock.now += 20  # expired
    assert (await tokens.token("k", provider.obtain)).access_token == "token-3"
    assert provider.refresh_tokens_seen == [None, "refresh-1", None]


async def lost(tokens: TokenManager, key: str) -> bool:
    token = await tokens.peek(key)
    return token is not None and token.refresh_lost


async def test_a_refused_refresh_leaves_the_refresh_token_as_it_was() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock, attempts=1)
    await tokens.token("k", provider.obtain)
    clock.now += 150
    provider.failures = [TransientTokenError("HTTP 503")]
    with pytest.raises(TransientTokenError):
        await tokens.token("k", provider.obtain)
    stored = await tokens.peek("k")
    assert stored is not None and stored.refresh_token == "refresh-1" and stored.refreshing_by is None
    assert (await tokens.token("k", provider.obtain)).access_token == "token-3"
    assert provider.refresh_tokens_seen == [None, "refresh-1", "refresh-1"]


async def test_a_caller_that_goes_away_does_not_abandon_the_refresh() -> None:
    clock = Clock()
    provider = Provider(clock)
    tokens = manager(clock)
    await tokens.token("k", provider.obtain)
    clock.now += 150
    provider.gate = anyio.Event()
    provider.entered = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tokens.token, "k", provider.obtain)
        with anyio.fail_after(5):
            await provider.entered.wait()
        tg.cancel_scope.cancel()  # the client disconnects mid-refresh
        provider.gate.set()
    stored = await tokens.peek("k")
    assert stored is not None and stored.access_token == "token-2" and stored.refresh_token == "refresh-2"


class PausingCache(MemoryTokenCache):
    """Holds the first write-ahead mark written while `armed` until `resume` is set: a holder paused (SIGSTOP)
    between reading the token set under its lock and marking it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.paused = anyio.Event()
        self.resume = anyio.Event()

    async def set(self, key: str, token: TokenSet) -> TokenSet | None:
        if self.armed and token.refreshing_by is not None:
            self.armed = False
            self.paused.set()
            await self.resume.wait()
        return await super().set(key, token)


async def two_replicas(shared: MemoryTokenCache) -> tuple[Clock, Provider, TokenManager, TokenManager]:
    """Two managers with their own locks on one store: two replicas once the first holder's lease ran out while it
    was paused. The first has obtained token-1, and the clock is past its expiry."""
    clock = Clock()
    provider = Provider(clock)
    first, second = manager(clock, cache=shared), manager(clock, cache=shared)
    await first.token("k", provider.obtain)
    clock.now += 150
    return clock, provider, first, second


async def first_paused_second_runs(
    first: TokenManager,
    second: TokenManager,
    provider: Provider,
    paused: anyio.Event,
    resume: Callable[[], None],
    before_second: Callable[[], None] = lambda: None,
) -> dict[str, TokenSet]:
    """The first manager's renewal runs until `paused` (its holder stopped there), the second's runs whole (after
    `before_second`), then the first resumes (`resume`); what each was served."""
    seen: dict[str, TokenSet] = {}

    async def run(name: str, tokens: TokenManager) -> None:
        seen[name] = await tokens.token("k", provider.obtain)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first", first)
        with anyio.fail_after(5):
            await paused.wait()
        before_second()
        await run("second", second)
        resume()
    return seen


async def test_a_holder_paused_past_its_lock_before_marking_sends_nothing() -> None:
    """Fencing. The first holder is paused between reading the token set and marking it; its lease runs out. The
    second refreshes; the first, resumed, has its mark refused (the record moved on), reads the new set and sends
    nothing: one refresh, and the spent refresh token is never presented again (a provider would take that for
    reuse and revoke the grant)."""
    shared = PausingCache()
    _, provider, first, second = await two_replicas(shared)
    shared.armed = True
    seen = await first_paused_second_runs(first, second, provider, shared.paused, shared.resume.set)
    assert provider.calls == 2  # the first token, then one refresh
    assert seen["first"].access_token == seen["second"].access_token == "token-2"
    assert provider.refresh_tokens_seen.count("refresh-1") == 1
    stored = await shared.get("k")
    assert stored is not None and stored.access_token == "token-2" and stored.refreshing_by is None


async def test_a_holder_paused_past_its_lock_never_overwrites_a_newer_token_set() -> None:
    """The first holder is paused with its refresh in flight; its lease runs out. The second finds its mark, drops
    the refresh token, and (the token having expired) obtains a new set. The first's answer, arriving late, must not
    replace that newer set: it is discarded and the newer one served."""
    shared = MemoryTokenCache()
    _, provider, first, second = await two_replicas(shared)
    gate = provider.gate = anyio.Event()
    provider.entered = anyio.Event()

    def ungate() -> None:
        provider.gate = None  # the second's request is answered at once: token-3, without a refresh token

    seen = await first_paused_second_runs(first, second, provider, provider.entered, gate.set, ungate)
    assert provider.refresh_tokens_seen == [None, "refresh-1", None]  # token-2 (refresh-1's) came late
    stored = await shared.get("k")
    assert stored is not None and stored.access_token == "token-3"
    assert seen["first"].access_token == seen["second"].access_token == "token-3"


async def test_a_late_answer_replaces_the_set_it_refreshed_when_nothing_newer_came() -> None:
    """Fencing refuses only what is stale: the first holder, paused with its refresh in flight, comes back to find
    its token set merely settled by the second (its renewal due, it dropped the marked refresh token and could not
    obtain without one: a per-user grant needs its user; the access token is still served). The first's answer is
    the newest token set there is, so it is stored, refresh token and all."""
    shared = MemoryTokenCache()
    clock, provider, first, second = await two_replicas(shared)
    gate = provider.gate = anyio.Event()
    provider.entered = anyio.Event()
    first_done = anyio.Event()

    async def run_first() -> None:
        await first.token("k", provider.obtain)
        first_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_first)
        with anyio.fail_after(5):
            await provider.entered.wait()
        provider.gate = None  # (the first still waits on its own request's answer)
        provider.failures = [TerminalGrantError("the user must connect again")]
        clock.now = START + 85  # the stored set is valid again for the second, and due for renewal
        second.attach(spawner(tg))
        served = await second.token("k", provider.obtain)
        assert served.access_token == "token-1"  # at once, while its renewal runs in the background
        with anyio.fail_after(5):
            while not ((settled := await shared.get("k")) and settled.refresh_lost):
                await anyio.wait_all_tasks_blocked()
        assert settled.refresh_token is None and settled.refreshing_by is None
        gate.set()
        with anyio.fail_after(5):
            await first_done.wait()
        tg.cancel_scope.cancel()  # (the second's refresh timer)
    assert provider.refresh_tokens_seen == [None, "refresh-1", None]  # the second sent no refresh token
    stored = await shared.get("k")
    assert stored is not None and stored.access_token == "token-2" and stored.refresh_token == "refresh-2"
    assert not stored.refresh_lost and stored.refreshing_by is None

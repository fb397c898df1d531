"""Tokens as infrastructure: cached, refreshed once 80% of their lifetime has passed, one refresh per key.

Three rules keep fifty concurrent callers from stampeding a provider:
- a fresh token is served from the cache without a lock;
- a token past 80% but not expired is still served, and one background refresh is started for its key;
- an expired or missing token is renewed under a per-key lock, with the cache read again inside the lock
  (double-checked), so only the first waiter calls the provider and the rest find its result.

Transient provider errors are retried a few times with exponential backoff and jitter; terminal ones propagate.
The cache and the locks are Protocols: the in-process defaults can be replaced by shared (e.g. Redis) ones.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any, Protocol

import anyio

from virtual_mcp.outbound.oauth_client import TokenSet, TransientTokenError
from virtual_mcp.timing import phase

logger = logging.getLogger(__name__)

Obtain = Callable[[TokenSet | None], Awaitable[TokenSet]]  # given the current token (maybe None), get a new one
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class TokenCache(Protocol):
    async def get(self, key: str) -> TokenSet | None: ...
    async def set(self, key: str, token: TokenSet) -> None: ...
    async def delete(self, key: str) -> None: ...


class KeyedLocks(Protocol):
    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...


class MemoryTokenCache:
    def __init__(self) -> None:
        self._tokens: dict[str, TokenSet] = {}

    async def get(self, key: str) -> TokenSet | None:
        return self._tokens.get(key)

    async def set(self, key: str, token: TokenSet) -> None:
        self._tokens[key] = token

    async def delete(self, key: str) -> None:
        self._tokens.pop(key, None)


class InProcessLocks:
    """One anyio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class TokenManager:
    def __init__(
        self,
        cache: TokenCache,
        locks: KeyedLocks,
        spawn: Spawn | None = None,
        *,
        clock: Callable[[], float] = time.time,
        default_lifetime: float = 300.0,
        refresh_fraction: float = 0.8,
        attempts: int = 3,
        backoff_seconds: float = 0.2,
    ) -> None:
        self._cache = cache
        self._locks = locks
        self._spawn = spawn
        self._clock = clock
        self._default_lifetime = default_lifetime
        self._fraction = refresh_fraction
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._refreshing: set[str] = set()

    def attach(self, spawn: Spawn) -> None:
        """Where background refreshes run: the gateway's task group, once it is started."""
        self._spawn = spawn

    async def token(self, key: str, obtain: Obtain) -> TokenSet:
        """A valid token for `key`, obtaining or refreshing it through `obtain` only when needed."""
        with phase("token_lookup"):
            current = await self._cache.get(key)
        now = self._clock()
        if current is not None and now < current.refresh_due_at(self._default_lifetime, self._fraction):
            return current
        if current is not None and now < current.expires_at(self._default_lifetime):
            self._refresh_in_background(key, obtain)
            return current
        return await self._renew(key, obtain)

    async def peek(self, key: str) -> TokenSet | None:
        return await self._cache.get(key)

    async def forget(self, key: str) -> None:
        await self._cache.delete(key)

    async def store(self, key: str, token: TokenSet) -> None:
        """A token obtained outside a refresh (an authorization-code exchange)."""
        async with self._locks.lock(key):
            await self._cache.set(key, replace(token, obtained_at=self._clock()))

    def _refresh_in_background(self, key: str, obtain: Obtain) -> None:
        if key in self._refreshing or self._spawn is None:
            return
        self._refreshing.add(key)

        async def refresh() -> None:
            try:
                await self._renew(key, obtain)
            except Exception:  # a background task: log, keep serving the current token until it expires
                logger.warning("background token refresh for %s failed", key, exc_info=True)
            finally:
                self._refreshing.discard(key)

        self._spawn(refresh)

    async def _renew(self, key: str, obtain: Obtain) -> TokenSet:
        with phase("token_lock_wait"):
            lock = self._locks.lock(key)
            await lock.__aenter__()
        try:
            current = await self._cache.get(key)  # double-checked: a waiter ahead of us may have renewed it
            if current is not None and self._clock() < current.refresh_due_at(self._default_lifetime, self._fraction):
                return current
            with phase("token_provider"):
                token = await self._obtain_with_retries(obtain, current)
            # Lifetimes are measured on this manager's clock, whatever stamped the response.
            token = replace(token, obtained_at=self._clock())
            await self._cache.set(key, token)
            return token
        finally:
            await lock.__aexit__(None, None, None)

    async def _obtain_with_retries(self, obtain: Obtain, current: TokenSet | None) -> TokenSet:
        for attempt in range(1, self._attempts + 1):
            try:
                return await obtain(current)
            except TransientTokenError:
                if attempt == self._attempts:
                    raise
                # Full jitter: concurrent gateways spread their retries instead of retrying in lockstep.
                await anyio.sleep(random.uniform(0, self._backoff * 2 ** (attempt - 1)))  # noqa: S311
        raise AssertionError("unreachable")

"""Tokens as infrastructure: cached, refreshed once 80% of their lifetime has passed, one refresh per key.

Three rules keep fifty concurrent callers from stampeding a provider:
- a fresh token is served from the cache without a lock;
- a token past 80% but not expired is still served, and one background refresh is started for its key;
- an expired or missing token is renewed under a per-key lock, with the cache read again inside the lock
  (double-checked), so only the first waiter calls the provider and the rest find its result.

Tokens in use ("hot") are also refreshed by a timer at 80% of their lifetime, so a request after a quiet spell
does not find its token about to expire.

Crash safety: before a refresh token is sent, the token set is written back marked with this manager's id (a
write-ahead mark); the new set replaces it in one atomic write. A process that finds another's mark knows a refresh
was interrupted and the provider may have rotated that refresh token, so it never presents it again: the access
token serves until it expires, then the obtain function decides (a new client-credentials token, or asking the user
to connect again). The same holds when a refresh request got no answer (`RefreshInDoubt`). The provider call runs
shielded from the caller's cancellation, so a caller going away never abandons a refresh half done.

Fencing: every write under the lock is a compare-and-set on the stored record's version (`TokenSet.version`). A
holder whose lock ran out while it was paused (a shared lock has a lease) finds its writes refused once another
holder has written: its mark is not written (so it sends nothing), and its result replaces the record only if that
is still the token set its refresh replaced (another holder dropped its refresh token meanwhile, nothing newer);
a newer token set is never overwritten.

Transient provider errors are retried a few times with exponential backoff and jitter; terminal ones propagate.
The cache and the locks are Protocols: the in-process defaults can be replaced by shared (e.g. Redis) ones.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio

from virtual_mcp.errors import GatewayError
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.oauth_client import (
    RefreshInDoubt,
    TerminalGrantError,
    TokenEndpointError,
    TokenSet,
    TransientTokenError,
)
from virtual_mcp.timing import phase

logger = logging.getLogger(__name__)

Obtain = Callable[[TokenSet | None], Awaitable[TokenSet]]  # given the current token (maybe None), get a new one
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
_TRIES = 5  # compare-and-set attempts before a renewal gives up (each refusal means another holder wrote)


class TokenCache(Protocol):
    async def get(self, key: str, fresh: bool = False) -> TokenSet | None:
        """The token for `key`; `fresh`: as the shared store has it now (another process or replica may have
        renewed it), not this process's copy."""
        ...

    async def set(self, key: str, token: TokenSet) -> TokenSet | None:
        """Store `token`; the token as stored (with its new version). A token with a `version` is written only if
        the stored record is still at that version (0: there is none); otherwise nothing is written and the answer
        is None: the record moved on (another holder of the key's lock wrote it)."""
        ...

    async def delete(self, key: str) -> None: ...
    def evict(self, key: str) -> None:
        """Forget what this process holds for `key`, leaving the shared store as it is."""


class KeyedLocks(Protocol):
    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...


class MemoryTokenCache:
    def __init__(self) -> None:
        self._tokens: dict[str, TokenSet] = {}

    async def get(self, key: str, fresh: bool = False) -> TokenSet | None:
        return self._tokens.get(key)

    async def set(self, key: str, token: TokenSet) -> TokenSet | None:
        held = self._tokens.get(key)
        version = held.version or 0 if held is not None else 0
        if token.version is not None and token.version != version:
            return None
        stored = self._tokens[key] = replace(token, version=version + 1)
        return stored

    async def delete(self, key: str) -> None:
        self._tokens.pop(key, None)

    def evict(self, key: str) -> None:
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


@dataclass
class _Hot:
    """A key a request used recently: how to renew it, when it was last used, when the timer should renew it."""

    obtain: Obtain
    used_at: float
    due_at: float


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
        hot_seconds: float = 900.0,
        retry_seconds: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._locks = locks
        self._spawn: Spawn | None = None
        self._clock = clock
        self._default_lifetime = default_lifetime
        self._fraction = refresh_fraction
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._hot_seconds = hot_seconds
        self._retry_seconds = retry_seconds
        self._refreshing: set[str] = set()
        self._hot: dict[str, _Hot] = {}
        self._wake = anyio.Event()
        self._timer_on = False
        # Marks this manager's refreshes in the store; any other mark found there is from a refresh that died. It
        # names the process for an operator (host:pid) and is unique by its random part.
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        if spawn is not None:
            self.attach(spawn)

    def attach(self, spawn: Spawn) -> None:
        """Where background refreshes run: the gateway's task group, once it is started. Starts the timer."""
        self._spawn = spawn
        if not self._timer_on:
            self._timer_on = True
            spawn(self._timer)

    async def token(self, key: str, obtain: Obtain) -> TokenSet:
        """A valid token for `key`, obtaining or refreshing it through `obtain` only when needed."""
        with phase("token_lookup"):
            current = await self._read(key)
        now = self._clock()
        usable = current is not None and now < current.expires_at(self._default_lifetime)
        if self._metrics is not None:
            self._metrics.child(self._metrics.cache_lookups, "token", "hit" if usable else "miss").inc()
        if current is not None and now < current.refresh_due_at(self._default_lifetime, self._fraction):
            self._touch(key, obtain, now, current)
            return current
        if current is not None and now < current.expires_at(self._default_lifetime) and not current.refresh_lost:
            self._refresh_in_background(key, obtain)
            self._touch(key, obtain, now, current)
            return current
        if current is not None and current.refresh_lost and now < current.expires_at(self._default_lifetime):
            return current  # nothing to refresh with: serve it out
        token = await self._renew(key, obtain)
        self._touch(key, obtain, now, token)
        return token

    async def peek(self, key: str) -> TokenSet | None:
        return await self._cache.get(key)

    async def forget(self, key: str) -> None:
        """Drop `key`'s token; for a caller that holds the key's lock (inside `obtain`)."""
        self._hot.pop(key, None)
        await self._cache.delete(key)

    async def drop(self, key: str) -> None:
        """`forget` under the key's lock, so a refresh under way cannot store a token after it."""
        async with self._locks.lock(key):
            await self.forget(key)

    async def evict(self, key: str) -> None:
        """Forget what this process holds for `key` (another process deleted it from the store), under its lock."""
        async with self._locks.lock(key):
            self._hot.pop(key, None)
            self._cache.evict(key)

    async def store(self, key: str, token: TokenSet) -> None:
        """A token obtained outside a refresh (an authorization-code exchange)."""
        async with self._locks.lock(key):
            await self._cache.set(key, replace(token, obtained_at=self._clock(), version=None))

    def wake(self) -> None:
        """Make the refresh timer look at its keys now (after the clock moved, or a key was added)."""
        self._wake.set()

    def _foreign(self, token: TokenSet | None) -> bool:
        return token is not None and token.refreshing_by is not None and token.refreshing_by != self.instance

    async def _read(self, key: str) -> TokenSet | None:
        token = await self._cache.get(key)
        if token is None or not self._foreign(token):
            return token
        if self._clock() < token.expires_at(self._default_lifetime):
            # Another process is refreshing it (a replica holding the key's lock), or stopped while it did: either
            # way its access token is still good to serve, without waiting. Its refresh token is not this process's
            # to use; a renewal settles that under the lock once one is due (`_renew`).
            return token
        async with self._locks.lock(key):  # expired: wait for a refresh under way, else settle the record
            return await self._settle(key, await self._cache.get(key, fresh=True))

    async def _settle(self, key: str, token: TokenSet | None) -> TokenSet | None:
        """Another process's write-ahead mark means its refresh died mid-way: the refresh token may have been
        rotated, so it is dropped (and the record rewritten so). The caller holds the key's lock."""
        if token is None or not self._foreign(token):
            return token
        logger.warning(
            "a token refresh by another process did not finish (it stopped, or was paused past its lock's lease); "
            "its refresh token is dropped"
        )
        settled = await self._cache.set(key, replace(token, refresh_token=None, refreshing_by=None, refresh_lost=True))
        if settled is None:  # the record moved on since it was read: settle what is there now
            return await self._settle(key, await self._cache.get(key, fresh=True))
        return settled

    def _touch(self, key: str, obtain: Obtain, now: float, token: TokenSet) -> None:
        due = token.refresh_due_at(self._default_lifetime, self._fraction)
        hot = self._hot.get(key)
        if hot is None:
            self._hot[key] = _Hot(obtain, now, due)
            self._wake.set()
        else:
            hot.used_at, hot.obtain = now, obtain
            if due > hot.due_at:
                hot.due_at = due

    async def _timer(self) -> None:
        """Renew hot tokens once 80% of their lifetime has passed, before a request needs them."""
        try:
            await self._tick()
        finally:
            self._timer_on = False

    async def _tick(self) -> None:
        while True:
            now = self._clock()
            for key, hot in list(self._hot.items()):
                if hot.used_at < now - self._hot_seconds:
                    del self._hot[key]  # not used lately: renewed on its next use instead
                elif hot.due_at <= now:
                    hot.due_at = now + self._retry_seconds  # until the refresh lands and moves it on
                    self._refresh_in_background(key, hot.obtain)
            delay = min((hot.due_at for hot in self._hot.values()), default=math.inf) - now
            with anyio.move_on_after(max(delay, 0.0)):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _refresh_in_background(self, key: str, obtain: Obtain) -> None:
        if key in self._refreshing or self._spawn is None:
            return
        self._refreshing.add(key)

        async def refresh() -> None:
            try:
                token = await self._renew(key, obtain)
                hot = self._hot.get(key)
                if hot is not None and token.refresh_lost:
                    del self._hot[key]  # nothing to refresh with: renewed (or the user asked) once it expires
                elif hot is not None:
                    hot.due_at = token.refresh_due_at(self._default_lifetime, self._fraction)
                    self._wake.set()
            except TransientTokenError as exc:  # keep serving the current token until it expires; retry later
                logger.warning("background token refresh failed, will retry: %s", exc.message)
            except GatewayError as exc:  # terminal (e.g. the user must connect again): the next request says so
                self._hot.pop(key, None)
                logger.info("background token refresh not possible: %s", exc.message)
            except Exception:
                logger.warning("background token refresh failed", exc_info=True)
            finally:
                self._refreshing.discard(key)

        self._spawn(refresh)

    async def _renew(self, key: str, obtain: Obtain) -> TokenSet:
        with phase("token_lock_wait"):
            lock = self._locks.lock(key)
            await lock.__aenter__()
        try:
            for _ in range(_TRIES):
                # Double-checked, in the shared store: a waiter ahead (in this process, or another replica) may
                # have renewed it.
                current = await self._settle(key, await self._cache.get(key, fresh=True))
                now = self._clock()
                if current is not None and now < current.refresh_due_at(self._default_lifetime, self._fraction):
                    return current
                # Shielded: a caller that goes away must not abandon a refresh the provider may already have done.
                with anyio.CancelScope(shield=True), phase("token_provider"):
                    token = await self._obtain_and_store(key, obtain, current)
                if token is not None:
                    return token
            raise TransientTokenError("the upstream token kept changing while it was being renewed; try again")
        finally:
            await lock.__aexit__(None, None, None)

    async def _obtain_and_store(self, key: str, obtain: Obtain, current: TokenSet | None) -> TokenSet | None:
        outcome = "error"
        try:
            token = await self._obtain_and_store_once(key, obtain, current)
            outcome = "ok" if token is not None else "overtaken"
            return token
        except TerminalGrantError:
            outcome = "terminal"
            raise
        except RefreshInDoubt:
            outcome = "in_doubt"
            raise
        except TransientTokenError:
            outcome = "transient"
            raise
        except TokenEndpointError:
            outcome = "refused"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.child(self._metrics.token_refreshes, key.partition("|")[0], outcome).inc()

    async def _obtain_and_store_once(self, key: str, obtain: Obtain, current: TokenSet | None) -> TokenSet | None:
        """The renewed token, stored; None when the record moved on before anything was sent (read it again)."""
        marked = None
        if current is not None and current.refresh_token:
            # Write-ahead, before the refresh token leaves; refused if another holder wrote since it was read.
            marked = await self._cache.set(key, replace(current, refreshing_by=self.instance))
            if marked is None:
                return None
        base = marked.version if marked is not None else (current.version if current is not None else 0)
        try:
            token = await self._obtain_with_retries(obtain, current)
        except RefreshInDoubt:
            assert current is not None
            lost = replace(current, refresh_token=None, refreshing_by=None, refresh_lost=True, version=base)
            stored = await self._write_result(key, current, lost)
            logger.warning("a token refresh got no answer; its refresh token is dropped rather than reused")
            if stored.access_token != current.access_token or self._clock() < current.expires_at(
                self._default_lifetime
            ):
                return stored
            token = await self._obtain_with_retries(obtain, stored)  # without a refresh token: obtain decides
            base = stored.version
        except BaseException:
            if current is not None and marked is not None:  # answered or never sent: as it was, if still ours
                await self._cache.set(key, replace(current, version=marked.version))
            raise
        # Lifetimes are measured on this manager's clock, whatever stamped the response. One write replaces the
        # marked set with the new access and refresh token together.
        token = replace(token, obtained_at=self._clock(), refreshing_by=None, refresh_lost=False, version=base)
        return await self._write_result(key, current, token)

    async def _write_result(self, key: str, current: TokenSet | None, token: TokenSet) -> TokenSet:
        """Write what a refresh of `current` produced, fenced: if the record moved on meanwhile (this holder's lock
        ran out), it is written over only while it still holds `current`'s token set (another holder merely dropped
        its refresh token); a newer token set stays, and is the answer."""
        for _ in range(_TRIES):
            stored = await self._cache.set(key, token)
            if stored is not None:
                return stored
            latest = await self._cache.get(key, fresh=True)
            if latest is None:  # removed meanwhile (disconnected, revoked): not brought back
                logger.warning("a token was removed while it was being renewed; the renewed one is not stored")
                return token
            if current is None or latest.access_token != current.access_token:
                logger.warning("a newer token set was stored while this refresh ran (its lock ran out); it stays")
                settled = await self._settle(key, latest)
                assert settled is not None
                return settled
            token = replace(token, version=latest.version)
        raise TransientTokenError("the upstream token kept changing while it was being renewed; try again")

    async def _obtain_with_retries(self, obtain: Obtain, current: TokenSet | None) -> TokenSet:
        for attempt in range(1, self._attempts + 1):
            try:
                return await obtain(current)
            except RefreshInDoubt:
                raise
            except TransientTokenError:
                if attempt == self._attempts:
                    raise
                # Full jitter: concurrent gateways spread their retries instead of retrying in lockstep.
                await anyio.sleep(random.uniform(0, self._backoff * 2 ** (attempt - 1)))  # noqa: S311
        raise AssertionError("unreachable")

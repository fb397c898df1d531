"""Gateway tokens verified a moment ago, answered from memory when the token store is a network round trip away
(PostgreSQL): each request would otherwise wait on the database before anything else.

A token is answered from memory for at most `ttl` seconds after the store last said it was good (the revocation
poll interval, 1 s by default), and never past its expiry. Every entry is dropped at once when the fleet says
something was revoked (`forget`: a `revoked` event from `virtual-mcp revoke` or `token revoke` through Redis, or
the revocation watcher finding a new identity revocation), so a revoked token is refused by every replica at once
with Redis and within `ttl` without it. Entries are keyed by a hash of the token, never the token itself; at most
`max_entries` are kept (the least recently used goes first).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from virtual_mcp.vault.tokens import TokenInfo, TokenStore


class RecentlyVerified:
    def __init__(
        self,
        store: TokenStore,
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._monotonic = monotonic
        self._max = max_entries
        self._entries: dict[bytes, tuple[float, TokenInfo]] = {}
        self._generation = 0  # moved by `forget`: an answer read before it is not kept

    async def verify(self, token: str) -> TokenInfo | None:
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._monotonic()
        held = self._entries.pop(key, None)
        if held is not None and now - held[0] < self._ttl and held[1].active(self._clock()):
            self._entries[key] = held  # the most recently used now
            return held[1]
        generation = self._generation
        info = await self._store.verify(token)
        if info is not None and generation == self._generation:
            if len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (now, info)
        return info

    def forget(self) -> None:
        """Something was revoked: every token is asked of the store again (an answer being read meanwhile may
        predate the revocation, so it is used once and not kept)."""
        self._generation += 1
        self._entries.clear()

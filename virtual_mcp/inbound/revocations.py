"""What a running gateway knows of revoked identities, kept current from a shared feed (the database by default;
a Protocol, so a distributed feed can replace it).

Revoking a user revokes their gateway tokens in the token store at once (each request reads it); this list adds what
no store lookup covers: IdP JWTs issued before the revocation are refused, and the subjects revoked since the last
look are handed to whoever holds things for them in memory (upstream OAuth tokens).
"""

from __future__ import annotations

from typing import Protocol

from virtual_mcp.types import Revocation


class RevocationFeed(Protocol):
    async def since(self, after_id: int) -> list[Revocation]: ...


class RevocationList:
    def __init__(self, feed: RevocationFeed) -> None:
        self._feed = feed
        self._cutoff: dict[str, float] = {}  # subject -> latest revocation time
        self._last = 0

    def revoked_at(self, subject: str) -> float | None:
        return self._cutoff.get(subject)

    async def refresh(self) -> list[str]:
        """Read revocations recorded since the last refresh; returns their subjects (oldest first)."""
        fresh = await self._feed.since(self._last)
        for revocation in fresh:
            self._cutoff[revocation.subject] = max(revocation.revoked_at, self._cutoff.get(revocation.subject, 0.0))
            self._last = max(self._last, revocation.id)
        return [r.subject for r in fresh]

"""How many 2025-11-25 client sessions one principal, and the gateway as a whole, may hold open.

A session costs the gateway memory and a server task until it is ended or expires, so one caller opening sessions
in a loop would otherwise take every place and leave the others with 503s. Each principal has a quota of its own;
the gateway's total is the backstop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import Overloaded, TooManyRequests
from virtual_mcp.types import Principal

# What a refused opener is told to wait before trying again: sessions end by DELETE or idle expiry, not on a clock.
RETRY_AFTER_SECONDS = 60.0


class SessionTable(Protocol):
    """The open sessions of one endpoint."""

    @property
    def open(self) -> int: ...

    def owned_by(self, subject: str) -> int: ...


class SessionQuota:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._tables: list[SessionTable] = []
        self._opening: Counter[str] = Counter()  # opening requests under way, per subject

    def watch(self, table: SessionTable) -> None:
        self._tables.append(table)

    def reserve(self, principal: Principal) -> Callable[[], None]:
        """A place for one more session of `principal` while its opening request is served; call the result when
        that request is done (the session, if established, then counts as open). Raises TooManyRequests when the
        principal holds its quota, Overloaded when the gateway holds its maximum."""
        subject = principal.subject
        limits = self._limits
        held = sum(t.owned_by(subject) for t in self._tables) + self._opening[subject]
        if held >= limits.sessions_per_principal:
            raise TooManyRequests(
                f"Too many open sessions: you hold {held} of at most {limits.sessions_per_principal}; end one you no "
                f"longer use (HTTP DELETE with its Mcp-Session-Id) or let idle ones expire "
                f"({limits.session_idle_seconds:g} s without a request)",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if sum(t.open for t in self._tables) + self._opening.total() >= limits.max_sessions:
            raise Overloaded(f"The gateway holds its maximum of {limits.max_sessions} open sessions; retry later")
        self._opening[subject] += 1

        def release() -> None:
            self._opening[subject] -= 1
            if self._opening[subject] <= 0:
                del self._opening[subject]

        return release

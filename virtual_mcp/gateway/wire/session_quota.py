"""How many 2025-11-25 client sessions one principal, and the gateway as a whole, may hold open.

A session costs the gateway memory and a server task until it is ended or expires, so one caller opening sessions
in a loop would otherwise take every place and leave the others with 503s. Each principal has a quota of its own;
the gateway's total is the backstop. With a fleet (Redis) both are counted over every replica (fleet/sessions.py);
while Redis cannot say, each replica counts the sessions it knows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import GatewayError, Overloaded, TooManyRequests
from virtual_mcp.types import Principal

# What a refused opener is told to wait before trying again: sessions end by DELETE or idle expiry, not on a clock.
RETRY_AFTER_SECONDS = 60.0


class SessionTable(Protocol):
    """The open sessions of one endpoint."""

    @property
    def open(self) -> int: ...

    def owned_by(self, subject: str) -> int: ...


class FleetCounts(Protocol):
    """The fleet's counts of open sessions (fleet/sessions.py's SessionFleet)."""

    async def reserve(self, owner: str, quota: int, maximum: int) -> tuple[str, str | None] | None: ...

    async def release(self, owner: str, place: str) -> None: ...


@dataclass(eq=False)
class Reservation:
    """A place held for a session while its opening request is served."""

    subject: str
    place: str | None  # the fleet's, when the fleet counted it
    held_here: bool  # counted by this replica (the fleet could not say)
    done: bool = False


class SessionQuota:
    def __init__(self, limits: Limits, fleet: FleetCounts | None = None) -> None:
        self._limits = limits
        self._fleet = fleet
        self._tables: list[SessionTable] = []
        self._opening: Counter[str] = Counter()  # opening requests under way, per subject

    def watch(self, table: SessionTable) -> None:
        self._tables.append(table)

    async def reserve(self, principal: Principal) -> Reservation:
        """A place for one more session of `principal` while its opening request is served: `opened` once the
        session is established (it then counts as open), `release` if it is not. Raises TooManyRequests when the
        principal holds its quota, Overloaded when the gateway holds its maximum."""
        subject = principal.subject
        limits = self._limits
        if self._fleet is not None:
            counted = await self._fleet.reserve(subject, limits.sessions_per_principal, limits.max_sessions)
            if counted is not None:
                place, refused = counted
                if refused == "owner":
                    raise self._over_quota(f"you hold {limits.sessions_per_principal}")  # (over every replica)
                if refused is not None:
                    raise Overloaded(
                        f"The gateway holds its maximum of {limits.max_sessions} open sessions; retry later"
                    )
                return Reservation(subject, place, held_here=False)
        held = sum(t.owned_by(subject) for t in self._tables) + self._opening[subject]
        if held >= limits.sessions_per_principal:
            raise self._over_quota(f"you hold {held}")
        if sum(t.open for t in self._tables) + self._opening.total() >= limits.max_sessions:
            raise Overloaded(f"The gateway holds its maximum of {limits.max_sessions} open sessions; retry later")
        self._opening[subject] += 1
        return Reservation(subject, None, held_here=True)

    def _over_quota(self, held: str) -> GatewayError:
        limits = self._limits
        return TooManyRequests(
            f"Too many open sessions: {held} of at most {limits.sessions_per_principal}; end one you no longer use "
            f"(HTTP DELETE with its Mcp-Session-Id) or let idle ones expire ({limits.session_idle_seconds:g} s "
            "without a request)",
            retry_after=RETRY_AFTER_SECONDS,
        )

    def opened(self, reservation: Reservation) -> str | None:
        """The session is established: from now on it counts itself (the fleet's place, to count it in)."""
        self._forget(reservation)
        return reservation.place

    async def release(self, reservation: Reservation) -> None:
        """The session was not established: its place is free again."""
        place = reservation.place if not reservation.done else None
        self._forget(reservation)
        if place is not None and self._fleet is not None:
            await self._fleet.release(reservation.subject, place)

    def _forget(self, reservation: Reservation) -> None:
        if reservation.done:
            return
        reservation.done = True
        if reservation.held_here:
            subject = reservation.subject
            self._opening[subject] -= 1
            if self._opening[subject] <= 0:
                del self._opening[subject]

"""A 2025-11-25 backend session that several replicas of the gateway hold as one (the seam `Shared`; the fleet's
implementation is fleet/upstream.py).

A backend keeps state per session (what a tool stored, a session resource, subscriptions). A principal's requests
land on any replica, so every replica must use the same backend session for that principal, credential and declared
capabilities, or the backend would see one session per replica and the principal's state would depend on where a
request landed. The first replica to open it shares its handshake (the session id, sealed, with what the backend said
of itself); the others adopt it instead of opening their own. It is ended at the backend (DELETE) only when the last
replica holding it lets it go.

Only one replica can hold a session's GET stream (the backend refuses a second one, 409). Whichever holds it hands each
message it reads to the others (`fan_out`); every replica delivers it to its own watchers, each watcher of the fleet
once (`first`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Handshake:
    """What a replica needs to use a backend session another one opened."""

    session_id: str
    protocol_version: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    server_info: dict[str, Any] | None = None
    token: str = ""  # how the fleet knows this very handshake (opaque; empty until shared)


class Shared(Protocol):
    """One backend session's place in the fleet. Each method is best effort: None where the fleet cannot say."""

    digest: str  # how the fleet names it

    async def adopt(self) -> Handshake | None:
        """The session the fleet holds, if any (this replica now holds it too)."""
        ...

    async def share(self, mine: Handshake, stale: Handshake | None) -> Handshake | None:
        """Offer the session this replica just opened, replacing `stale` (one the backend forgot) if that is still
        the fleet's: `mine` shared (returned with its token), another replica's that came first (use it, end
        `mine`), or None if the fleet could not be told (`mine` is then this replica's alone)."""
        ...

    async def release(self) -> tuple[bool, str | None] | None:
        """This replica lets the session go: (whether no other replica holds the fleet's session, whose id it is now
        (None: none)); None if the fleet cannot say. The last holder ends the fleet's session at the backend."""
        ...

    async def fan_out(self, message: Mapping[str, Any], session_id: str) -> str | None:
        """Hand a message read from the session's GET stream (backend session `session_id`) to the other replicas
        holding it; its id in the fleet (None: not handed on, e.g. no other replica holds it)."""
        ...

    def names(self, held: str, session_id: str | None) -> bool:
        """Whether `held` (what a message handed on says it came on) is the backend session `session_id`."""
        ...

    async def first(self, message_id: str, watcher: str) -> bool | None:
        """Whether `watcher` (of any replica) is the first to take message `message_id` (None: cannot say)."""
        ...

    async def stream_free(self) -> None:
        """This replica no longer holds the session's GET stream: another replica with watchers takes it."""
        ...


class SharingFleet(Protocol):
    def shared(self, name: str, lease: float) -> Shared:
        """The fleet's view of the backend session the pool names `name` (a hold lasts `lease` s unless renewed)."""
        ...

    async def hold(self, sessions: Iterable[tuple[Shared, str]]) -> None:
        """Renew this replica's hold of each session (with the token of the handshake it holds)."""
        ...

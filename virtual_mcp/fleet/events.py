"""What the replicas of one gateway tell each other at once, by Redis pub/sub on one channel (`vmcp:events`):

- `revoked`: an identity or a token was revoked (by `virtual-mcp revoke`, `token revoke`, or a replica). Each
  replica reads the database's revocations at once instead of at its next poll. The database stays the record and
  the poll stays the fallback, so an event lost (Redis down, a replica reconnecting) delays nothing beyond the poll.
- `list_changed`: a backend told one replica its list changed. The others refetch their catalog of that server and
  tell their own callers, as the first one did. Replicas skip their own events.
- `connected`: a user connected an account for a server (the consent's callback reached one replica): a call on
  another replica waiting for it goes on.

An event carries no secret and no identity: only what kind of change, the server's `group/name`, a digest of the user
for `connected`, and which replica (a random id per process) sent it. A message on the channel that is not one of
these is ignored (and logged at debug): the channel is a nudge, never an instruction to trust.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from virtual_mcp.fleet.channel import IDLE_PING, Channel
from virtual_mcp.fleet.connection import fleet_redis
from virtual_mcp.fleet.sealing import digest
from virtual_mcp.fleet.status import FleetStatus

logger = logging.getLogger(__name__)

CHANNEL = "vmcp:events"
KINDS = ("revoked", "list_changed", "connected")
_MAX_MESSAGE = 1024


@dataclass(frozen=True)
class FleetEvent:
    kind: str  # one of KINDS
    server: str | None = None  # `group/name`, for list_changed and connected
    who: str | None = None  # for connected: a digest of the user (`user_digest`), never the name


def user_digest(user: str) -> str:
    return digest("virtual-mcp/user\0" + user)


def encode(origin: str, event: FleetEvent) -> str:
    body: dict[str, str] = {"v": "1", "from": origin, "kind": event.kind}
    if event.server is not None:
        body["server"] = event.server
    if event.who is not None:
        body["who"] = event.who
    return json.dumps(body, separators=(",", ":"))


def decode(raw: bytes | str) -> tuple[str, FleetEvent] | None:
    """(the sender, the event), or None for anything that is not an event of this version."""
    if len(raw) > _MAX_MESSAGE:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("v") != "1" or body.get("kind") not in KINDS:
        return None
    origin, server, who = body.get("from"), body.get("server"), body.get("who")
    if not isinstance(origin, str) or not all(x is None or isinstance(x, str) for x in (server, who)):
        return None
    if body["kind"] in ("list_changed", "connected") and server is None:
        return None
    if body["kind"] == "connected" and (who is None or not re.fullmatch(r"[0-9a-f]{64}", who)):
        return None
    return origin, FleetEvent(body["kind"], server, who)


class FleetEvents:
    """This replica's end of the channel: `publish` sends (best effort), `run` receives until cancelled."""

    def __init__(self, redis: Redis, status: FleetStatus, idle_ping: float = IDLE_PING) -> None:
        self._channel = Channel(redis, status, "events", CHANNEL, idle_ping)
        self.origin = secrets.token_hex(8)

    async def publish(self, event: FleetEvent) -> int | None:
        """How many subscribers Redis passed it to (0: no replica listens); None if it could not be sent (the others
        then learn by their poll or expiry)."""
        return await self._channel.publish(encode(self.origin, event))

    async def run(
        self,
        deliver: Callable[[FleetEvent], None],
        missed: Callable[[], None],
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Deliver the other replicas' events as they come. Whenever the subscription is made again after a break,
        `missed()` first: what was published meanwhile is lost, so the receiver catches up by other means.
        `subscribed()` is called each time the subscription stands."""

        def handle(raw: bytes | str) -> None:
            decoded = decode(raw)
            if decoded is None:
                logger.debug("ignored a message on %s that is not a fleet event", CHANNEL)
                return
            origin, event = decoded
            if origin != self.origin:
                deliver(event)

        await self._channel.run(handle, missed, subscribed)


async def announce(url: str, event: FleetEvent) -> int | None:
    """From a command beside the replicas (`virtual-mcp revoke`): publish `event` once; how many replicas heard it,
    or None if Redis could not take it (the replicas then find the change at their next database poll)."""
    async with fleet_redis(url) as redis:
        assert redis is not None
        return await FleetEvents(redis, FleetStatus()).publish(event)

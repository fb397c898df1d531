"""What the replicas of one gateway tell each other at once, by Redis pub/sub on one channel (`vmcp:events`):

- `revoked`: an identity or a token was revoked (by `virtual-mcp revoke`, `token revoke`, or a replica). Each
  replica reads the database's revocations at once instead of at its next poll. The database stays the record and
  the poll stays the fallback, so an event lost (Redis down, a replica reconnecting) delays nothing beyond the poll.
- `list_changed`: a backend told one replica its list changed. The others refetch their catalog of that server and
  tell their own callers, as the first one did. Replicas skip their own events.

An event carries no secret and no identity: only what kind of change, the server's `group/name`, and which replica
(a random id per process) sent it. A message on the channel that is not one of these is ignored (and logged at
debug): the channel is a nudge, never an instruction to trust.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from virtual_mcp.fleet.connection import fleet_redis
from virtual_mcp.fleet.status import FleetStatus

logger = logging.getLogger(__name__)

CHANNEL = "vmcp:events"
KINDS = ("revoked", "list_changed")
_MAX_MESSAGE = 1024
_IDLE_PING = 5.0  # seconds without a message before the connection is checked
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


@dataclass(frozen=True)
class FleetEvent:
    kind: str  # one of KINDS
    server: str | None = None  # `group/name`, for list_changed


def encode(origin: str, event: FleetEvent) -> str:
    body: dict[str, str] = {"v": "1", "from": origin, "kind": event.kind}
    if event.server is not None:
        body["server"] = event.server
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
    origin, server = body.get("from"), body.get("server")
    if not isinstance(origin, str) or not (server is None or isinstance(server, str)):
        return None
    if body["kind"] == "list_changed" and server is None:
        return None
    return origin, FleetEvent(body["kind"], server)


class FleetEvents:
    """This replica's end of the channel: `publish` sends (best effort), `run` receives until cancelled."""

    def __init__(self, redis: Redis, status: FleetStatus) -> None:
        self._redis = redis
        self._status = status
        self.origin = secrets.token_hex(8)

    async def publish(self, event: FleetEvent) -> bool:
        """True once Redis took it; False if it could not be sent (the others then learn by their poll or expiry)."""
        try:
            await self._redis.publish(CHANNEL, encode(self.origin, event))
        except (RedisError, OSError) as exc:
            self._status.failed("events", exc)
            return False
        return True

    async def run(
        self,
        deliver: Callable[[FleetEvent], None],
        missed: Callable[[], None],
        subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Deliver the other replicas' events as they come. Whenever the subscription is made again after a break,
        `missed()` first: what was published meanwhile is lost, so the receiver catches up by other means.
        `subscribed()` is called each time the subscription stands."""
        pause = _FIRST_PAUSE
        broken = False
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._status.succeeded("events")
                    pause = _FIRST_PAUSE
                    if broken:
                        broken = False
                        missed()
                    if subscribed is not None:
                        subscribed()
                    await self._receive(pubsub, deliver)
            except (RedisError, OSError) as exc:
                self._status.failed("events", exc)
                broken = True
            await anyio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    async def _receive(self, pubsub: PubSub, deliver: Callable[[FleetEvent], None]) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_IDLE_PING)
            if message is None:
                await pubsub.ping()  # a connection that died quietly raises here, and is made again
                continue
            if message.get("type") != "message":
                continue
            decoded = decode(message["data"])
            if decoded is None:
                logger.debug("ignored a message on %s that is not a fleet event", CHANNEL)
                continue
            origin, event = decoded
            if origin != self.origin:
                deliver(event)


async def announce(url: str | None, event: FleetEvent) -> bool | None:
    """From a command beside the replicas (`virtual-mcp revoke`): publish `event` once. None without a Redis URL;
    False if Redis could not take it (the replicas then find the change at their next database poll)."""
    if url is None:
        return None
    async with fleet_redis(url) as redis:
        assert redis is not None
        return await FleetEvents(redis, FleetStatus()).publish(event)

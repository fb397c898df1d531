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
_DEADLINE = 2.0  # seconds for one Redis command
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

    def __init__(self, redis: Redis, status: FleetStatus, idle_ping: float = _IDLE_PING) -> None:
        self._redis = redis
        self._idle_ping = idle_ping
        self._status = status
        self.origin = secrets.token_hex(8)
        self._subscribed = False

    async def publish(self, event: FleetEvent) -> int | None:
        """How many subscribers Redis passed it to (0: no replica listens); None if it could not be sent (the others
        then learn by their poll or expiry)."""
        try:
            with anyio.fail_after(_DEADLINE):
                heard = int(await self._redis.publish(CHANNEL, encode(self.origin, event)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed("events", exc)
            return None
        if self._subscribed:
            self._status.succeeded("events")  # (a blip that failed a publish is over)
        return heard

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
                    with anyio.fail_after(_DEADLINE):
                        await pubsub.subscribe(CHANNEL)
                    self._subscribed = True
                    self._status.succeeded("events")
                    pause = _FIRST_PAUSE
                    if broken:
                        broken = False
                        missed()
                    if subscribed is not None:
                        subscribed()
                    await self._receive(pubsub, deliver)
            except (RedisError, OSError, TimeoutError) as exc:
                self._status.failed("events", exc)
                broken = True
            self._subscribed = False
            await anyio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    async def _receive(self, pubsub: PubSub, deliver: Callable[[FleetEvent], None]) -> None:
        """Until the connection fails. A connection that died without a reset (a partition, a failover) is found by
        its silence: after `idle_ping` seconds without a message it is pinged, and without even the answer to that
        within another `idle_ping` it is given up (TimeoutError) and made again."""
        heard = anyio.current_time()
        pinged = False
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._idle_ping)
            if message is None:
                if pinged and anyio.current_time() - heard > 2 * self._idle_ping:
                    raise TimeoutError(f"no answer on {CHANNEL} for {2 * self._idle_ping:g} s")
                await pubsub.ping()
                pinged = True
                continue
            heard, pinged = anyio.current_time(), False
            if message.get("type") != "message":
                continue  # (the answer to a ping)
            decoded = decode(message["data"])
            if decoded is None:
                logger.debug("ignored a message on %s that is not a fleet event", CHANNEL)
                continue
            origin, event = decoded
            if origin != self.origin:
                deliver(event)


async def announce(url: str, event: FleetEvent) -> int | None:
    """From a command beside the replicas (`virtual-mcp revoke`): publish `event` once; how many replicas heard it,
    or None if Redis could not take it (the replicas then find the change at their next database poll)."""
    async with fleet_redis(url) as redis:
        assert redis is not None
        return await FleetEvents(redis, FleetStatus()).publish(event)

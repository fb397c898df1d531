"""2025-11-25 backend sessions held as one by the whole fleet (Redis): the implementation of upstream/shared.py.

**The record.** `vmcp:upstream:<digest>` (the digest names the pool's key: server, principal, credential, declared
capabilities) holds the backend session's handshake, sealed (fleet/sealing.py): the session id is the backend's
bearer of that session's state, and Redis never holds it readable. `vmcp:upstream:<digest>:holders` is a sorted set of
the replicas holding it, by the expiry of their hold; each replica renews its holds at every sweep of its pool, and the
record lives as long as a hold does. The last replica to let it go (or the first to find every other hold expired)
deletes the record and ends the session at the backend.

**The channel** `vmcp:upstream` carries, sealed with their send time like every fleet notice:
- `message`: a message the replica holding the session's GET stream read from it, with an id; every replica delivers
  it to its own watchers, and `vmcp:upstream:seen:<digest>` (SET NX) lets each watcher of the fleet take it once;
- `free`: the replica holding the GET stream let it go; a replica with watchers opens it.

Without Redis (down, or not configured) each replica holds its own backend sessions, as with one replica: the part
`upstream` is degraded (fleet/status.py), and a session shared before is not ended at the backend by a replica that
cannot tell whether another one still holds it (the backend's own expiry ends it).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.channel import Channel
from virtual_mcp.fleet.sealing import Notices, Sealer, digest
from virtual_mcp.fleet.status import FleetStatus
from virtual_mcp.upstream.shared import Handshake, Shared

logger = logging.getLogger(__name__)

CHANNEL = "vmcp:upstream"
PART = "upstream"
_DEADLINE = 1.0  # seconds for one Redis command
_SEEN_MS = 120_000  # how long a delivered message is remembered as delivered
_MAX_MESSAGE = 1024 * 1024

# Holds are members of the holders set (a replica's session object each, so a session closing on a replica never
# takes the hold of the one that replaced it there), scored by their expiry. The set lives at least as long as a hold.
_HOLD_SET = """
local function hold(key, member, expiry, life)
  redis.call('zadd', key, expiry, member)
  if redis.call('pttl', key) < tonumber(life) then redis.call('pexpire', key, life) end
end
"""

# KEYS: record, holders. ARGV: the hold, its expiry (ms), its life (ms).
_ADOPT = (
    _HOLD_SET
    + """
local current = redis.call('get', KEYS[1])
if current then hold(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) end
return current
"""
)

# KEYS: record, holders. ARGV: the new handshake (sealed), the stale one it replaces ('' none), the hold, its expiry
# (ms), its life (ms). Returns the fleet's handshake if it is another than the stale one (adopt it), else nothing (the
# new one is the fleet's).
_SHARE = (
    _HOLD_SET
    + """
local current = redis.call('get', KEYS[1])
hold(KEYS[2], ARGV[3], ARGV[4], ARGV[5])
if current and current ~= ARGV[2] then return current end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[5])
return false
"""
)

# KEYS: record, holders. ARGV: the hold, its expiry (ms), its life (ms), the handshake it holds (sealed). Renews the
# hold and the record; a record that is gone while it is held (Redis restarted, or was flushed) is this one again.
_RENEW = (
    _HOLD_SET
    + """
hold(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
local left = redis.call('pttl', KEYS[1])
if left == -2 then
  redis.call('set', KEYS[1], ARGV[4], 'PX', ARGV[3])
elseif left < tonumber(ARGV[3]) then
  redis.call('pexpire', KEYS[1], ARGV[3])
end
return 1
"""
)

# KEYS: record, holders. ARGV: the hold, now (ms). {1 if no other hold is left (the record goes), the record}; {-1,
# ''} if the record is gone (Redis lost it: whether another replica holds the session cannot be told).
_RELEASE = """
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[2])
local current = redis.call('get', KEYS[1])
if not current then return {-1, ''} end
if redis.call('zcard', KEYS[2]) > 0 then return {0, current} end
redis.call('del', KEYS[1], KEYS[2])
return {1, current}
"""


@dataclass(frozen=True)
class Heard:
    """Another replica's notice about a backend session (`session`: the digest of its pool key)."""

    kind: str  # "message" | "free"
    session: str
    message_id: str = ""
    message: dict[str, Any] | None = None
    held: str = ""  # a digest of the backend session id the message came on


class UpstreamFleet:
    """This replica's end of the fleet's backend-session records and channel."""

    def __init__(self, redis: Redis, status: FleetStatus, sealer: Sealer) -> None:
        self._redis = redis
        self._status = status
        self._sealer = sealer
        self._channel = Channel(redis, status, PART, CHANNEL)
        self.origin = secrets.token_hex(8)
        self._notices = Notices(sealer, self.origin, "backend session notice", _MAX_MESSAGE)
        self._adopt = redis.register_script(_ADOPT)
        self._share = redis.register_script(_SHARE)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    def shared(self, name: str, lease: float) -> SharedSession:
        """The fleet's view of one backend session (`name`: the pool's key, as text; never stored as such), each
        replica's hold lasting `lease` seconds unless renewed (`hold`)."""
        return SharedSession(self, digest(name), lease)

    def _failed(self, exc: BaseException, what: str) -> None:
        self._status.failed(PART, exc)
        logger.debug("upstream sessions: %s failed (%s)", what, type(exc).__name__)

    def _ok(self) -> None:
        self._status.succeeded(PART)

    async def hold(self, sessions: Iterable[tuple[Shared, str]]) -> None:
        """Renew this replica's hold of each session (with the token of the handshake it holds), and the record with
        it."""
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=False) as pipe:
                    count = 0
                    for shared, token in sessions:
                        if not isinstance(shared, SharedSession):
                            continue
                        args = [*shared._hold_args(), token]
                        await self._renew(
                            keys=[_record(shared.digest), _holders(shared.digest)], args=args, client=pipe
                        )
                        count += 1
                    if count:
                        await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "renewing holds")
            return
        self._ok()

    async def _run_script(self, script: Any, session: str, args: list[str | int], what: str) -> Any:
        try:
            with anyio.fail_after(_DEADLINE):
                answer = await script(keys=[_record(session), _holders(session)], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, what)
            raise _Unreachable from None
        self._ok()
        return answer

    def _seal(self, handshake: Handshake) -> str:
        inner = {
            "id": handshake.session_id,
            "v": handshake.protocol_version,
            "c": handshake.capabilities,
            "i": handshake.server_info,
            "n": secrets.token_hex(8),  # two handshakes of the same session id are still told apart
        }
        return self._sealer.seal(json.dumps(inner).encode())

    def _open(self, sealed: bytes | str) -> Handshake | None:
        text = sealed.decode() if isinstance(sealed, bytes) else sealed
        opened = self._sealer.open(text)
        if opened is None:
            logger.info("a shared backend session this replica cannot open (another master key?); not adopted")
            return None
        try:
            inner = json.loads(opened)
        except ValueError:
            return None
        session_id, version = inner.get("id"), inner.get("v")
        if not isinstance(session_id, str) or not session_id or not isinstance(version, str):
            return None
        capabilities, info = inner.get("c"), inner.get("i")
        return Handshake(
            session_id,
            version,
            capabilities if isinstance(capabilities, dict) else {},
            info if isinstance(info, dict) else None,
            text,
        )

    async def publish(self, kind: str, session: str, message_id: str = "", message: Any = None, held: str = "") -> bool:
        text = self._notices.seal({"k": kind, "d": session, "n": message_id, "m": message, "h": held})
        if text is None:
            logger.info("a backend message too large to hand to another replica; delivered here only")
            return False
        return bool(await self._channel.publish(text))

    def decode(self, raw: bytes | str) -> Heard | None:
        """Another replica's fresh notice sealed by this fleet; None for this replica's own and anything else."""
        inner = self._notices.open(raw)
        if inner is None:
            return None
        kind, session, message_id, message, held = (inner.get(k) for k in ("k", "d", "n", "m", "h"))
        if not isinstance(session, str):
            return None
        if kind == "free":
            return Heard("free", session)
        if kind == "message" and isinstance(message_id, str) and message_id and isinstance(message, dict):
            return Heard("message", session, message_id, message, held if isinstance(held, str) else "")
        return None

    async def first(self, message_id: str, watcher: str) -> bool | None:
        try:
            with anyio.fail_after(_DEADLINE):
                taken = await self._redis.set(
                    "vmcp:upstream:seen:" + digest(message_id + "\0" + watcher), "1", nx=True, px=_SEEN_MS
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "taking a message")
            return None
        self._ok()
        return bool(taken)

    async def run(self, deliver: Callable[[Heard], None], subscribed: Callable[[], None] | None = None) -> None:
        """Deliver the other replicas' notices until cancelled."""

        def handle(raw: bytes | str) -> None:
            heard = self.decode(raw)
            if heard is not None:
                deliver(heard)

        await self._channel.run(handle, subscribed=subscribed)


class _Unreachable(Exception):
    """Redis could not be asked (the part is marked degraded)."""


class SharedSession:
    """One backend session's place in the fleet (implements upstream/shared.py's `Shared`)."""

    def __init__(self, fleet: UpstreamFleet, session: str, lease: float) -> None:
        self._fleet = fleet
        self.digest = session
        self._lease = lease
        self._member = f"{fleet.origin}:{secrets.token_hex(6)}"  # this object's hold

    def _hold_args(self) -> list[str | int]:
        return [self._member, _now_ms() + _ms(self._lease), _ms(self._lease)]

    async def adopt(self) -> Handshake | None:
        try:
            sealed = await self._fleet._run_script(self._fleet._adopt, self.digest, self._hold_args(), "adopting")
        except _Unreachable:
            return None
        return self._fleet._open(sealed) if sealed else None

    async def share(self, mine: Handshake, stale: Handshake | None) -> Handshake | None:
        sealed = self._fleet._seal(mine)
        origin, expiry, life = self._hold_args()
        args: list[str | int] = [sealed, stale.token if stale is not None else "", origin, expiry, life]
        try:
            theirs = await self._fleet._run_script(self._fleet._share, self.digest, args, "sharing")
        except _Unreachable:
            return None
        if not theirs:
            return Handshake(mine.session_id, mine.protocol_version, mine.capabilities, mine.server_info, sealed)
        return self._fleet._open(theirs)

    async def release(self) -> tuple[bool, str | None] | None:
        try:
            last, current = await self._fleet._run_script(
                self._fleet._release, self.digest, [self._member, _now_ms()], "releasing"
            )
        except _Unreachable:
            return None
        if int(last) < 0:
            logger.info("upstream sessions: a shared session's record is gone (Redis lost it?); left to the backend")
            return None
        handshake = self._fleet._open(current) if current else None
        return bool(last), handshake.session_id if handshake is not None else None

    async def fan_out(self, message: Mapping[str, Any], session_id: str) -> str | None:
        try:
            with anyio.fail_after(_DEADLINE):
                holds = int(await self._fleet._redis.zcard(_holders(self.digest)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._fleet._failed(exc, "counting holds")
            return None
        if holds <= 1:
            return None  # no other replica holds it: nobody to hand it to
        message_id = secrets.token_hex(12)
        sent = await self._fleet.publish("message", self.digest, message_id, dict(message), digest(session_id))
        return message_id if sent else None

    def names(self, held: str, session_id: str | None) -> bool:
        return session_id is not None and held == digest(session_id)

    async def first(self, message_id: str, watcher: str) -> bool | None:
        return await self._fleet.first(message_id, self.digest + "\0" + watcher)

    async def stream_free(self) -> None:
        await self._fleet.publish("free", self.digest)


def _record(session: str) -> str:
    return f"vmcp:upstream:{session}"


def _holders(session: str) -> str:
    return f"vmcp:upstream:{session}:holders"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))

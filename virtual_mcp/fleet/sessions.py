"""2025-11-25 client sessions over the fleet (Redis): a session opened on one replica goes on on any other, so a load
balancer needs no stickiness.

**The record.** `vmcp:session:<digest>` (a hash; the digest is SHA-256 of the session id, and the id itself is never
stored) holds what a replica needs to serve the session: the endpoint it was opened on, a digest of its owner's
subject, the negotiated version, the client capabilities it declared, and its `logging/setLevel` choice. It expires
after the session's idle time. Each replica renews it for the sessions it served since its last sweep and for those it
holds a request of (a call or a GET stream), so a session expires only when the whole fleet has left it idle.

**The channel** `vmcp:sessions` carries what one replica must do for a session another one serves:
- `ended`: the session was ended (DELETE): its calls here are cancelled and its GET stream here is closed;
- `cancel`: `notifications/cancelled` for a call this replica may be serving;
- `level`: the session's new log level;
- `unsubscribe`: the session unsubscribed from a resource (the replica where it subscribed stops its updates);
- `push`: a message for the session's GET stream, from a replica that does not hold the stream (a resource update, a
  log message outside any call);
- `answer`: the caller's answer to a question this replica asked it.

Every notice is sealed whole (fleet/sealing.py) with the time it was sent: `push` and `answer` carry what callers and
backends say, which Redis never holds readable, and no notice can be turned to another session or kind, forged without
the fleet's key, or replayed a minute later. While a question waits, its id is registered (`vmcp:question:<digest>`):
the replica that receives the answer then knows whether any replica waits for it, and only the first answer is taken.

**The quota.** Each principal's open sessions are counted over the fleet in a sorted set by expiry
(`vmcp:sessions:owner:<digest of the subject>`), the whole fleet's in `vmcp:sessions:all`: a session is opened only
if the principal holds fewer than its quota and the fleet fewer than its maximum, checked and counted in one script
(its place held while its `initialize` is served). Ended sessions leave the sets; expired ones fall out by their
score.

Without Redis (down, or not configured), each replica serves the sessions it knows: the part `sessions` is degraded
(fleet/status.py), and a request for a session opened elsewhere is answered 404 (its client opens a new one).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.channel import Channel
from virtual_mcp.fleet.sealing import Notices, Sealer, digest
from virtual_mcp.fleet.status import FleetStatus

logger = logging.getLogger(__name__)

CHANNEL = "vmcp:sessions"
PART = "sessions"
KINDS = ("ended", "cancel", "level", "push", "answer", "unsubscribe")
_MAX_MESSAGE = 1024 * 1024  # a sealed message larger than this is not sent (the stream's reader would drop it too)
_DEADLINE = 1.0  # seconds for one Redis command: a session's request never waits longer on Redis
_QUESTION_TTL_MS = 3_600_000  # a question's registration outlives no question (each is removed when it is settled)
_FIELDS = ("e", "o", "v", "c", "l")
_ALL = "vmcp:sessions:all"
_HOLD_SECONDS = 60.0  # a place held for a session whose `initialize` is being served


def _record_key(session_id: str) -> str:
    return f"vmcp:session:{digest(session_id)}"


def _owner_key(owner: str) -> str:
    return f"vmcp:sessions:owner:{digest(owner)}"


def _question_key(session_id: str, question_id: str) -> str:
    return f"vmcp:question:{digest(session_id + chr(0) + question_id)}"


@dataclass(frozen=True)
class Record:
    """A session as another replica opened it."""

    version: str
    declared: dict[str, Any]
    log_level: str | None


@dataclass(frozen=True)
class Notice:
    """What the channel says about one session (`session` is its digest)."""

    kind: str
    session: str
    body: Any = None  # cancel: the request id; level: the level; push, answer: the message


# KEYS: the owner's set, the fleet's. ARGV: now ms, member, expiry ms, quota, maximum.
# 0: counted; 1: the owner holds its quota; 2: the fleet holds its maximum.
_RESERVE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1])
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('zcard', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
local want = tonumber(ARGV[3]) - tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  redis.call('zadd', key, ARGV[3], ARGV[2])
  local t = redis.call('pttl', key)
  if t == -1 or t < want then redis.call('pexpire', key, want) end
end
return 0
"""

# KEYS: a count set. ARGV: the member's expiry (ms), the member, "xx" (only if it is counted already) or "", now
# (ms), a held place it takes over ("" none). Its score and the set's life only ever grow.
_COUNT = """
if ARGV[5] ~= '' then redis.call('zrem', KEYS[1], ARGV[5]) end
if ARGV[3] == 'xx' then redis.call('zadd', KEYS[1], 'XX', 'GT', ARGV[1], ARGV[2])
else redis.call('zadd', KEYS[1], 'GT', ARGV[1], ARGV[2]) end
local want = tonumber(ARGV[1]) - tonumber(ARGV[4])
local t = redis.call('pttl', KEYS[1])
if t == -1 or (t >= 0 and t < want) then redis.call('pexpire', KEYS[1], want) end
return 1
"""

# Sets a field of a record only while the record exists (never makes a record without its owner).
_SET_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class SessionFleet:
    """This replica's end of the fleet's session records and channel. Every method is best effort: a Redis failure
    marks the part degraded and answers as if no other replica had the session."""

    def __init__(self, redis: Redis, status: FleetStatus, sealer: Sealer) -> None:
        self._redis = redis
        self._status = status
        self._sealer = sealer
        self._channel = Channel(redis, status, PART, CHANNEL)
        self.origin = secrets.token_hex(8)
        self._notices = Notices(sealer, self.origin, "session notice", _MAX_MESSAGE)
        self._set_if_exists = redis.register_script(_SET_IF_EXISTS)
        self._reserve = redis.register_script(_RESERVE)
        self._count = redis.register_script(_COUNT)

    def _failed(self, exc: BaseException, what: str) -> None:
        self._status.failed(PART, exc)
        logger.debug("sessions: %s failed (%s)", what, type(exc).__name__)

    async def reserve(self, owner: str, quota: int, maximum: int) -> tuple[str, str | None] | None:
        """Hold a place for a session of `owner` while it is opened: (the place's id, None), or ("", why not:
        "owner" at its quota, "fleet" at its maximum); None if Redis cannot say (this replica then counts alone)."""
        place = "opening:" + secrets.token_hex(8)
        now = _now_ms()
        args: list[str | int] = [now, place, now + _ms(_HOLD_SECONDS), quota, maximum]
        try:
            with anyio.fail_after(_DEADLINE):
                refused = int(await self._reserve(keys=[_owner_key(owner), _ALL], args=args))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "counting sessions")
            return None
        self._status.succeeded(PART)
        return (place, None) if refused == 0 else ("", "owner" if refused == 1 else "fleet")

    async def release(self, owner: str, place: str) -> None:
        """A place held for a session that was not opened."""
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(_owner_key(owner), place)
                    pipe.zrem(_ALL, place)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "counting sessions")

    async def opened(
        self,
        session_id: str,
        endpoint: str,
        owner: str,
        version: str,
        declared: Mapping[str, Any],
        idle: float,
        place: str | None = None,
    ) -> bool:
        """Record a session this replica opened (counted in the place held for it); False if the fleet could not be
        told (it is then this replica's)."""
        fields: dict[Any, Any] = {"e": endpoint, "o": digest(owner), "v": version, "c": json.dumps(dict(declared))}
        counted = digest(session_id)
        expiry = _now_ms() + _ms(idle)
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(_record_key(session_id), mapping=fields)
                    pipe.pexpire(_record_key(session_id), _ms(idle))
                    for counts in (_owner_key(owner), _ALL):
                        args: list[str | int] = [expiry, counted, "", expiry - _ms(idle), place or ""]
                        await self._count(keys=[counts], args=args, client=pipe)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "recording a session")
            return False
        self._status.succeeded(PART)
        return True

    async def load(self, session_id: str, endpoint: str, owner: str) -> Record | None:
        """The session opened elsewhere, if it is open, on `endpoint`, and `owner`'s."""
        try:
            with anyio.fail_after(_DEADLINE):
                values = await self._redis.hmget(_record_key(session_id), list(_FIELDS))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "looking a session up")
            return None
        self._status.succeeded(PART)
        e, o, v, c, level = (x.decode() if isinstance(x, bytes) else x for x in values)
        if e != endpoint or o != digest(owner) or not v:
            return None
        try:
            declared = json.loads(c or "{}")
        except ValueError:
            declared = {}
        return Record(v, declared if isinstance(declared, dict) else {}, level or None)

    async def renew(self, idle: Mapping[str, tuple[str, float]]) -> None:
        """Each session (its id: its owner, seconds) expires no sooner than its given seconds from now, in its record
        and in the counts (sessions this replica served)."""
        if not idle:
            return
        now = _now_ms()
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for session_id, (owner, seconds) in idle.items():
                        # GT: another replica's later use is never shortened by this one's earlier one.
                        pipe.pexpire(_record_key(session_id), _ms(seconds), gt=True)
                        expiry = now + _ms(seconds)
                        for counts in (_owner_key(owner), _ALL):
                            await self._count(
                                keys=[counts], args=[expiry, digest(session_id), "xx", now, ""], client=pipe
                            )
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "renewing sessions")
            return
        self._status.succeeded(PART)

    async def remaining(self, session_ids: Sequence[str]) -> list[float | None] | None:
        """Seconds until each session expires in the fleet (None: it has expired or ended); None if Redis could not
        say."""
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for session_id in session_ids:
                        pipe.pttl(_record_key(session_id))
                    answers = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "reading sessions' expiry")
            return None
        self._status.succeeded(PART)
        return [None if ms == -2 else (math.inf if ms == -1 else ms / 1000) for ms in answers]

    async def ended(self, session_id: str, owner: str) -> None:
        """The session was ended here (DELETE): its record and count go, and every replica ends its part of it."""
        try:
            with anyio.fail_after(_DEADLINE):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(_record_key(session_id))
                    pipe.zrem(_owner_key(owner), digest(session_id))
                    pipe.zrem(_ALL, digest(session_id))
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "ending a session")
        await self._publish(Notice("ended", digest(session_id)))

    async def set_level(self, session_id: str, level: str) -> None:
        try:
            with anyio.fail_after(_DEADLINE):
                await self._set_if_exists(keys=[_record_key(session_id)], args=["l", level])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "recording a log level")
        await self._publish(Notice("level", digest(session_id), level))

    async def cancel(self, session_id: str, request_id: int | str) -> None:
        await self._publish(Notice("cancel", digest(session_id), request_id))

    async def unsubscribed(self, session_id: str, uri: str) -> None:
        await self._publish(Notice("unsubscribe", digest(session_id), uri))

    async def push(self, session_id: str, message: Mapping[str, Any]) -> None:
        await self._publish(Notice("push", digest(session_id), dict(message)))

    async def asked(self, session_id: str, question_id: str) -> None:
        """A question of this replica waits for the session's answer."""
        try:
            with anyio.fail_after(_DEADLINE):
                await self._redis.set(_question_key(session_id, question_id), "1", px=_QUESTION_TTL_MS)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "registering a question")

    async def settled(self, session_id: str, question_id: str) -> None:
        """The question no longer waits (answered, withdrawn, or its call ended)."""
        try:
            with anyio.fail_after(_DEADLINE):
                await self._redis.delete(_question_key(session_id, question_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "settling a question")

    async def answer(self, session_id: str, message: Mapping[str, Any]) -> bool:
        """Hand the caller's answer to the replica whose question it answers; False if no replica waits for it (or
        Redis could not say)."""
        question_id = message.get("id")
        if not isinstance(question_id, str):
            return False
        try:
            with anyio.fail_after(_DEADLINE):
                taken = await self._redis.delete(_question_key(session_id, question_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "taking an answer")
            return False
        if not taken:
            return False
        return bool(await self._publish(Notice("answer", digest(session_id), dict(message))))

    async def _publish(self, notice: Notice) -> int | None:
        text = self._encode(notice)
        if text is None:
            logger.info("a %s for a session is too large to hand to another replica; dropped", notice.kind)
            return None
        return await self._channel.publish(text)

    def _encode(self, notice: Notice) -> str | None:
        # All of it sealed: a notice cannot be turned to another session or kind, nor replayed late.
        return self._notices.seal({"k": notice.kind, "s": notice.session, "b": notice.body})

    def decode(self, raw: bytes | str) -> Notice | None:
        """The notice of another replica; None for this replica's own and for anything that is not a fresh notice
        sealed by a replica of this fleet."""
        inner = self._notices.open(raw)
        if inner is None:
            return None
        kind, session, body = inner.get("k"), inner.get("s"), inner.get("b")
        if kind not in KINDS or not isinstance(session, str):
            return None
        valid = {
            "ended": True,
            "cancel": isinstance(body, int | str) and not isinstance(body, bool),
            "level": isinstance(body, str),
            "unsubscribe": isinstance(body, str),
            "push": isinstance(body, dict),
            "answer": isinstance(body, dict),
        }
        return Notice(kind, session, body) if valid[kind] else None

    async def run(self, deliver: Callable[[Notice], None], subscribed: Callable[[], None] | None = None) -> None:
        """Deliver the other replicas' notices until cancelled. (What was published during a break is lost: a
        cancellation or a stream message then is, as on a dropped connection; an end is found by the record's
        absence at the next sweep.)"""

        def handle(raw: bytes | str) -> None:
            notice = self.decode(raw)
            if notice is not None:
                deliver(notice)

        await self._channel.run(handle, subscribed=subscribed)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000)) if math.isfinite(seconds) else 2**62

"""The 2025-11-25 session table of one endpoint: who owns each session, what it chose, what it has in flight, its
GET stream, and when it expires.

A session belongs to the principal that opened it: a request with its id from anyone else is answered as if it did
not exist. It expires `session_idle_seconds` after the end of its last request; a request in flight (an open GET stream
included) holds it. Ending a session (DELETE, expiry, shutdown) cancels its requests, whose streams then end without
an answer, and closes its GET stream.

With a fleet (Redis, fleet/sessions.py) a session opened on one replica is found by any other, which serves it from a
copy of its record; the session expires when no replica has used it for its idle time. DELETE ends it on every replica;
a cancellation, the caller's answer to a question, a new log level and a message for its GET stream reach the replica
they concern. A replica that stops ends only its own part of its sessions (its calls, the GET streams it holds): the
sessions go on elsewhere.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio

from virtual_mcp.config.settings import Limits
from virtual_mcp.fleet.sealing import digest
from virtual_mcp.fleet.sessions import Notice, Record
from virtual_mcp.gateway.wire.asking import Questions
from virtual_mcp.upstream.capabilities import NONE, Capabilities

logger = logging.getLogger(__name__)
RequestKey = int | str


def request_key(request_id: int | str) -> RequestKey:
    """A JSON-RPC id as the session correlates it: "7" and 7 are one id (as in the MCP SDKs, TypeScript's too)."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            return request_id
    return request_id


_OUTBOX = 256  # messages for GET streams on other replicas waiting to be sent; past that they are dropped


class Fleet(Protocol):
    """The sessions of the replicas (fleet/sessions.py's SessionFleet)."""

    async def opened(
        self,
        session_id: str,
        endpoint: str,
        owner: str,
        version: str,
        declared: Mapping[str, Any],
        idle: float,
        place: str | None = None,
    ) -> bool: ...

    async def load(self, session_id: str, endpoint: str, owner: str) -> Record | None: ...

    async def renew(self, idle: Mapping[str, tuple[str, float]]) -> None: ...

    async def remaining(self, session_ids: Sequence[str]) -> list[float | None] | None: ...

    async def ended(self, session_id: str, owner: str) -> None: ...

    async def set_level(self, session_id: str, level: str) -> None: ...

    async def cancel(self, session_id: str, request_id: int | str) -> None: ...

    async def unsubscribed(self, session_id: str, uri: str) -> None: ...

    async def push(self, session_id: str, message: Mapping[str, Any]) -> None: ...

    async def asked(self, session_id: str, question_id: str) -> None: ...

    async def settled(self, session_id: str, question_id: str) -> None: ...

    async def answer(self, session_id: str, message: Mapping[str, Any]) -> bool: ...


class _SharedQuestions:
    """Where a session's questions are registered for the fleet: an answer POSTed to any replica then finds them."""

    def __init__(self, fleet: Fleet, session_id: str) -> None:
        self._fleet = fleet
        self._session_id = session_id

    async def asked(self, question_id: str) -> None:
        await self._fleet.asked(self._session_id, question_id)

    async def settled(self, question_id: str) -> None:
        await self._fleet.settled(self._session_id, question_id)


class Stream(Protocol):
    """What a session's GET stream is to the table: something to send a message to, and to close."""

    def push(self, message: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class Call:
    """A request being served on a session."""

    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    session_ended: bool = False


@dataclass(eq=False)
class Session:
    id: str
    owner: str  # the subject of the principal that opened it
    version: str  # the negotiated protocol version
    log_level: str | None = None  # its logging/setLevel choice
    idle_deadline: float = math.inf
    in_flight: int = 0
    calls: dict[RequestKey, Call] = field(default_factory=dict)
    stream: Stream | None = None  # the GET stream, while one is open
    stream_opened: anyio.Event = field(default_factory=anyio.Event)  # set when its first GET stream opens
    ended: bool = False
    closed: anyio.Event = field(default_factory=anyio.Event)  # set when it ends
    declared: Capabilities = field(
        default_factory=lambda: NONE
    )  # the relayed client capabilities it declared at initialize
    questions: Questions = field(default_factory=Questions)  # backends' questions waiting for its answers
    ending: list[Callable[[], None]] = field(default_factory=list)  # called once when it ends
    used: bool = False  # a request of it ended since the fleet's record was last renewed
    shared: bool = False  # the fleet holds its record (opened here and recorded, or opened elsewhere)
    # With a fleet: where a message for its GET stream goes when this replica does not hold the stream.
    elsewhere: Callable[[Mapping[str, Any]], None] | None = None
    # With a fleet: tells the other replicas of a new log level, of an unsubscription.
    level_changed: Callable[[str], Any] | None = None
    unsubscribed_here: Callable[[str], Any] | None = None
    unsubscribing: list[Callable[[str], None]] = field(default_factory=list)  # called when it unsubscribes elsewhere

    # What a subscriber of resource updates is (service/resource_updates.py).
    @property
    def key(self) -> str:
        return self.id

    def push(self, message: Mapping[str, Any]) -> None:
        """Send `message` on its GET stream: this replica's, or with a fleet the one another replica holds (a message
        for a session without one is lost)."""
        if self.stream is not None:
            self.stream.push(message)
        elif self.elsewhere is not None:
            self.elsewhere(message)

    def on_unsubscribed(self, callback: Callable[[str], None]) -> None:
        self.unsubscribing.append(callback)

    async def unsubscribed(self, uri: str) -> None:
        """It unsubscribed from `uri` here: the other replicas forget its subscription too."""
        if self.unsubscribed_here is not None:
            await self.unsubscribed_here(uri)

    async def set_log_level(self, level: str) -> None:
        """Its `logging/setLevel` choice, on every replica."""
        self.log_level = level
        if self.level_changed is not None:
            await self.level_changed(level)

    def on_end(self, callback: Callable[[], None]) -> None:
        if self.ended:
            callback()
        else:
            self.ending.append(callback)


class SessionTable:
    def __init__(self, limits: Limits, fleet: Fleet | None = None, endpoint: str = "") -> None:
        self._idle = limits.session_idle_seconds
        self._tick = max(0.05, min(self._idle / 4, 5.0))  # between sweeps
        self._sessions: dict[str, Session] = {}
        self._fleet = fleet
        self._endpoint = endpoint
        self._by_digest: dict[str, Session] = {}  # with a fleet: the channel names sessions by digest
        self._outbox, self._outgoing = anyio.create_memory_object_stream[tuple[str, Mapping[str, Any]]](_OUTBOX)

    # What the session quota reads (wire/session_quota.py).
    @property
    def open(self) -> int:
        return len(self._sessions)

    def owned_by(self, subject: str) -> int:
        return sum(1 for s in self._sessions.values() if s.owner == subject)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def open_session(self, owner: str, version: str, declared: Capabilities = NONE) -> Session:
        session = self._register(Session(secrets.token_hex(16), owner, version, declared=declared))
        logger.info("session %s opened", session.id[:8])
        return session

    def _register(self, session: Session) -> Session:
        session.idle_deadline = anyio.current_time() + self._idle
        self._sessions[session.id] = session
        fleet = self._fleet
        if fleet is not None:
            self._by_digest[digest(session.id)] = session
            session.questions = Questions(_SharedQuestions(fleet, session.id))
            session.elsewhere = partial(self._send_elsewhere, session.id)
            session.level_changed = partial(fleet.set_level, session.id)
            session.unsubscribed_here = partial(fleet.unsubscribed, session.id)
        return session

    async def share(self, session: Session, place: str | None = None) -> None:
        """Make the session (just opened, or initialized again) known to the fleet, so any replica serves it (and
        counted in the `place` held for it)."""
        if self._fleet is not None:
            session.shared = await self._fleet.opened(
                session.id,
                self._endpoint,
                session.owner,
                session.version,
                session.declared,
                self._idle + 2 * self._tick,
                place,
            )

    def find(self, session_id: str, subject: str) -> Session | None:
        """The session, if this replica knows it, it is open and it is `subject`'s (someone else's is answered as
        unknown)."""
        session = self._sessions.get(session_id)
        if session is None or session.ended or session.owner != subject:
            return None
        return session

    async def locate(self, session_id: str, subject: str) -> Session | None:
        """The session, if it is open and `subject`'s: this replica's, or with a fleet one opened on another
        replica (served here from then on from a copy of its record)."""
        if self._fleet is None or session_id in self._sessions:
            return self.find(session_id, subject)
        record = await self._fleet.load(session_id, self._endpoint, subject)
        if record is None:
            return None
        if session_id in self._sessions:  # (another request of it got here first, meanwhile)
            return self.find(session_id, subject)
        session = Session(session_id, subject, record.version, log_level=record.log_level, declared=record.declared)
        session.shared = True
        return self._register(session)

    def _send_elsewhere(self, session_id: str, message: Mapping[str, Any]) -> None:
        try:
            self._outbox.send_nowait((session_id, message))
        except anyio.WouldBlock:
            logger.info("messages for GET streams on other replicas are not leaving fast enough; one dropped")

    @contextmanager
    def holding(self, session: Session) -> Iterator[None]:
        """A request in flight holds the session: no idle expiry until the last one ends."""
        session.in_flight += 1
        session.idle_deadline = math.inf
        try:
            yield
        finally:
            session.in_flight -= 1
            session.used = True
            if not session.in_flight:
                session.idle_deadline = anyio.current_time() + self._idle

    @contextmanager
    def call(self, session: Session, request_id: int | str) -> Iterator[Call | None]:
        """The request's entry in the session while it is served (None: that id is in flight already)."""
        key = request_key(request_id)
        if key in session.calls:
            yield None
            return
        call = session.calls[key] = Call()
        try:
            yield call
        finally:
            if session.calls.get(key) is call:
                del session.calls[key]

    async def cancel(self, session: Session, request_id: int | str) -> None:
        """`notifications/cancelled`: the call, here or (with a fleet) on the replica serving it."""
        call = session.calls.get(request_key(request_id))
        if call is not None:
            call.cancel.cancel()
        elif self._fleet is not None:
            await self._fleet.cancel(session.id, request_id)

    async def answer(self, session: Session, message: Mapping[str, Any]) -> bool:
        """Hand the caller's answer to its question: here, or (with a fleet) to the replica that asked it. False if
        no question waits for it."""
        if session.questions.deliver(message):
            question_id = message.get("id")
            if self._fleet is not None and isinstance(question_id, str):  # taken: no other replica takes it again
                await self._fleet.settled(session.id, question_id)
            return True
        return self._fleet is not None and await self._fleet.answer(session.id, message)

    async def delete(self, session: Session) -> None:
        """DELETE: the session ends on every replica."""
        self.end(session)
        if self._fleet is not None:
            await self._fleet.ended(session.id, session.owner)

    def notice(self, notice: Notice) -> None:
        """What another replica says about a session this one may have a part of."""
        session = self._by_digest.get(notice.session)
        if session is None or session.ended:
            return
        if notice.kind == "ended":
            self.end(session)
        elif notice.kind == "cancel":
            call = session.calls.get(request_key(notice.body))
            if call is not None:
                call.cancel.cancel()
        elif notice.kind == "level":
            session.log_level = notice.body
        elif notice.kind == "unsubscribe":
            for forget in list(session.unsubscribing):
                forget(notice.body)
        elif notice.kind == "push":
            if session.stream is not None:
                session.stream.push(notice.body)
        elif notice.kind == "answer":
            session.questions.deliver(notice.body)

    def end(self, session: Session) -> None:
        """DELETE, idle expiry or shutdown: forget the session, cancel its requests, close its GET stream (this
        replica's part of it)."""
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.id, None)
        self._by_digest.pop(digest(session.id), None)
        for call in session.calls.values():
            call.session_ended = True
            call.cancel.cancel()
        if session.stream is not None:
            session.stream.close()
        for callback in session.ending:
            try:
                callback()
            except Exception:
                logger.exception("ending session %s", session.id[:8])
        session.ending.clear()
        session.closed.set()
        logger.info("session %s ended", session.id[:8])

    def end_all(self) -> None:
        for session in list(self._sessions.values()):
            self.end(session)

    def sweep(self, now: float) -> int:
        """End the sessions whose idle deadline is past at `now`; how many."""
        expired = [session for session in self._sessions.values() if session.idle_deadline <= now]
        for session in expired:
            logger.info("session %s idle for %g s", session.id[:8], self._idle)
            self.end(session)
        return len(expired)

    async def sweep_fleet(self, now: float) -> int:
        """With a fleet: renew the records of the sessions used here (with a grace of two sweeps, so a record never
        lapses between a request's end and the next renewal); end the shared sessions whose record is gone (ended or
        expired elsewhere, even if this replica missed the news), and those whose idle deadline is past at `now`
        unless another replica used them since (their deadline then moves to the fleet's). A session the fleet was
        never told of (opened while Redis was down), and every session while Redis cannot say, ends by its own
        deadline, as in `sweep`. How many ended."""
        assert self._fleet is not None
        grace = 2 * self._tick
        renewed: dict[str, tuple[str, float]] = {}
        for session in self._sessions.values():
            if session.in_flight:
                renewed[session.id] = (session.owner, self._idle + grace)
            elif session.used and session.idle_deadline > now:
                renewed[session.id] = (session.owner, session.idle_deadline - now + grace)
            session.used = False
        await self._fleet.renew(renewed)
        shared = [session for session in self._sessions.values() if session.shared]
        left = await self._fleet.remaining([session.id for session in shared]) if shared else []
        fleet_says = dict(zip((s.id for s in shared), left, strict=True)) if left is not None else {}
        ended = 0
        for session in list(self._sessions.values()):
            known = session.id in fleet_says
            seconds = fleet_says.get(session.id)
            if known and seconds is None:
                logger.info("session %s ended or expired on the other replicas", session.id[:8])
            elif session.idle_deadline > now:
                continue
            elif known and seconds is not None:
                session.idle_deadline = now + seconds  # used elsewhere since
                continue
            else:
                logger.info("session %s idle for %g s", session.id[:8], self._idle)
            self.end(session)
            ended += 1
        return ended

    async def expire_idle(self, tick: float | None = None) -> None:
        """Sweep every `tick` seconds (a quarter of the idle time, within 0.05 to 5 s) until cancelled; with a fleet,
        also send what other replicas' GET streams are to carry."""
        every = tick if tick is not None else self._tick
        async with anyio.create_task_group() as tg:
            if self._fleet is not None:
                tg.start_soon(self._send_outgoing, self._fleet)
            while True:
                await anyio.sleep(every)
                if self._fleet is None:
                    self.sweep(anyio.current_time())
                else:
                    await self.sweep_fleet(anyio.current_time())

    async def _send_outgoing(self, fleet: Fleet) -> None:
        async for session_id, message in self._outgoing:
            await fleet.push(session_id, message)

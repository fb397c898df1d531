"""The 2025-11-25 session table of one endpoint: who owns each session, what it chose, what it has in flight, its
GET stream, and when it expires.

A session belongs to the principal that opened it: a request with its id from anyone else is answered as if it did
not exist. It expires `session_idle_seconds` after the end of its last request; a request in flight (an open GET stream
included) holds it. Ending a session (DELETE, expiry, shutdown) cancels its requests, whose streams then end without
an answer, and closes its GET stream.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from virtual_mcp.config.settings import Limits
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

    # What a subscriber of resource updates is (service/resource_updates.py).
    @property
    def key(self) -> str:
        return self.id

    def push(self, message: Mapping[str, Any]) -> None:
        """Send `message` on its GET stream, if it has one open (a message for a session without one is lost)."""
        if self.stream is not None:
            self.stream.push(message)

    def on_end(self, callback: Callable[[], None]) -> None:
        if self.ended:
            callback()
        else:
            self.ending.append(callback)


class SessionTable:
    def __init__(self, limits: Limits) -> None:
        self._idle = limits.session_idle_seconds
        self._sessions: dict[str, Session] = {}

    # What the session quota reads (wire/session_quota.py).
    @property
    def open(self) -> int:
        return len(self._sessions)

    def owned_by(self, subject: str) -> int:
        return sum(1 for s in self._sessions.values() if s.owner == subject)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def open_session(self, owner: str, version: str) -> Session:
        session = Session(secrets.token_hex(16), owner, version)
        session.idle_deadline = anyio.current_time() + self._idle
        self._sessions[session.id] = session
        logger.info("session %s opened", session.id[:8])
        return session

    def find(self, session_id: str, subject: str) -> Session | None:
        """The session, if it is open and `subject`'s (someone else's is answered as unknown)."""
        session = self._sessions.get(session_id)
        if session is None or session.ended or session.owner != subject:
            return None
        return session

    @contextmanager
    def holding(self, session: Session) -> Iterator[None]:
        """A request in flight holds the session: no idle expiry until the last one ends."""
        session.in_flight += 1
        session.idle_deadline = math.inf
        try:
            yield
        finally:
            session.in_flight -= 1
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

    def cancel(self, session: Session, request_id: int | str) -> None:
        call = session.calls.get(request_key(request_id))
        if call is not None:
            call.cancel.cancel()

    def end(self, session: Session) -> None:
        """DELETE, idle expiry or shutdown: forget the session, cancel its requests, close its GET stream."""
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.id, None)
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

    async def expire_idle(self, tick: float | None = None) -> None:
        """Sweep every `tick` seconds (a quarter of the idle time, within 0.05 to 5 s) until cancelled."""
        every = tick if tick is not None else max(0.05, min(self._idle / 4, 5.0))
        while True:
            await anyio.sleep(every)
            self.sweep(anyio.current_time())

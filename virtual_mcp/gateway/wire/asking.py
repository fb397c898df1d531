"""Asking a 2025-11-25 caller what a backend asks of it (elicitation, sampling, roots): the request goes out on the
stream of the caller's call that it belongs to, with an id of the gateway's; the caller POSTs its answer to the
session; the answer is handed to the asking call and nowhere else.

An answer is accepted only from the session the question went to, only for a question still waiting, and only
once: an answer to anything else (never asked, asked of another session, already answered, or whose call has ended)
is refused with 400 and its text says which id. A question outlives neither its call nor its session.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from virtual_mcp.errors import INTERNAL_ERROR, AskFailed, CannotAsk
from virtual_mcp.gateway.service.asks import caller_error, checked_answer


class Stream(Protocol):
    """The call's own event stream."""

    async def event(self, message: Mapping[str, Any]) -> None: ...


@dataclass(eq=False)
class Question:
    method: str
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Mapping[str, Any] | None = None


class Registry(Protocol):
    """Where a session's waiting questions are known beyond this replica (wire/sessions.py, with a fleet): the
    caller's answer may reach another replica."""

    async def asked(self, question_id: str) -> None: ...

    async def settled(self, question_id: str) -> None: ...


class Questions:
    """A session's questions waiting for their answers, by the id the gateway gave each."""

    def __init__(self, registry: Registry | None = None) -> None:
        self._waiting: dict[str, Question] = {}
        self._registry = registry

    def __len__(self) -> int:
        return len(self._waiting)

    def deliver(self, message: Mapping[str, Any]) -> bool:
        """Hand a caller's answer (a JSON-RPC response) to its question; False if no question waits for it."""
        question_id = message.get("id")
        question = self._waiting.pop(question_id, None) if isinstance(question_id, str) else None
        if question is None:
            return False
        question.answer = message
        question.answered.set()
        return True

    async def ask(self, stream: Stream, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Put the question on `stream` and wait for its answer (the caller's result, checked); AskFailed for the
        caller's error or a malformed answer. Cancelled with the call or the session."""
        question_id = f"vmcp-ask-{secrets.token_hex(8)}"
        question = self._waiting[question_id] = Question(method)
        try:
            if self._registry is not None:  # before it is asked: its answer may come at once, to another replica
                await self._registry.asked(question_id)
            await stream.event({"jsonrpc": "2.0", "id": question_id, "method": method, "params": dict(params)})
            await question.answered.wait()
        except anyio.get_cancelled_exc_class():
            # Withdrawn (the backend cancelled it, or the call ended): the caller is told, so it stops asking its
            # user; on a stream that is gone already this is lost, which is fine.
            withdrawn = {"requestId": question_id, "reason": "the server no longer needs the answer"}
            with anyio.CancelScope(shield=True), anyio.move_on_after(1), contextlib.suppress(Exception):
                await stream.event({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": withdrawn})
            raise
        finally:
            self._waiting.pop(question_id, None)
            if self._registry is not None:
                with anyio.CancelScope(shield=True):  # no replica may take an answer to it any more
                    await self._registry.settled(question_id)
        answer = question.answer or {}
        if "error" in answer:
            raise caller_error(method, answer["error"])
        return checked_answer(method, answer.get("result"))


class StreamAsker:
    """The `Asker` of one call: its session's questions, put on its own stream."""

    def __init__(self, questions: Questions, stream: Stream) -> None:
        self._questions = questions
        self._stream = stream

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self._questions.ask(self._stream, method, params)


_FIRST_STREAM_GRACE = 5.0


class _Pushed:
    """A session's GET stream as a `Stream`."""

    def __init__(self, push: Callable[[Mapping[str, Any]], None]) -> None:
        self._push = push

    async def event(self, message: Mapping[str, Any]) -> None:
        self._push(message)


class SessionAsker:
    """The `Asker` of a session outside its calls: its questions put on its GET stream, if it has one open, within
    `timeout` (a question outlives neither; CannotAsk when it has none, so another session may be asked)."""

    def __init__(self, session: AskedSession, timeout: float) -> None:
        self._session = session
        self._timeout = timeout

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session
        if not session.stream_opened.is_set():  # a client opens it right after its handshake: a moment's grace
            with anyio.move_on_after(_FIRST_STREAM_GRACE):
                await session.stream_opened.wait()
        if session.stream is None or session.ended:
            raise CannotAsk("the caller's session has no stream open to be asked on")
        try:
            with anyio.fail_after(self._timeout):
                return await session.questions.ask(_Pushed(session.push), method, params)
        except TimeoutError:
            raise AskFailed(INTERNAL_ERROR, f"the caller did not answer {method} in time") from None


class AskedSession(Protocol):
    questions: Questions
    ended: bool
    stream_opened: anyio.Event

    @property
    def stream(self) -> object | None: ...

    def push(self, message: Mapping[str, Any]) -> None: ...


def is_response(message: Mapping[str, Any]) -> bool:
    return "method" not in message and "id" in message and ("result" in message or "error" in message)

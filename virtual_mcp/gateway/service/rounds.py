"""A 2026-07-28 caller answers what a backend asks (elicitation, sampling, roots) by retrying its request: the
multi round-trip of that era. Its request gets an `input_required` result listing the questions, and a sealed
`requestState` (service/request_state.py); it sends the request again with its `inputResponses` and that state.

Two kinds of backend ask:
- a 2026-07-28 backend answers with `input_required` itself. Its `requestState` is sealed inside the gateway's
  ("pass"), and on the retry the answers and its own state go back to it. Nothing is held between the rounds.
- a 2025-11-25 or stdio backend asks with a request in the middle of the call, and waits for the answer on the same
  call. The call is held: it runs in the gateway's task group, not the caller's request, and its question is given
  to the caller as an `input_required` result ("held"); the retry carrying the answer finds the held call by the
  handle in its state, the backend gets its answer, and the retry waits for what the backend does next (its
  result, or another question). A held call lasts as long as the call's timeout allows, and is cancelled at the
  backend when the caller's request in flight is cancelled. Its progress and log messages go to whichever of the
  caller's requests is waiting on it.

A call is held only for a caller that declared a capability the gateway relays: without one, a backend's question
is refused at once (as the capability says), and the call runs in the caller's request as any other.

In a fleet the retry may land on another replica than the one holding the call (its state names that replica's
origin): the answers are handed to the holder (fleet/calls.py), which goes on with the call and says what came of it
(its result, an error, or its next question under a new state), the held call's progress and log messages passed on
to the retry meanwhile. A holder that is gone is an error saying so: the caller sends its request again.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from mcp_types import methods as spec_methods

from virtual_mcp.errors import INVALID_PARAMS, AskFailed, GatewayError, InvalidParams, TooManyRequests, UpstreamRpcError
from virtual_mcp.gateway.service.asks import Asker, checked_answer
from virtual_mcp.gateway.service.context import RequestContext, Sink
from virtual_mcp.gateway.service.relay import forward
from virtual_mcp.gateway.service.request_state import Issued, RequestStates
from virtual_mcp.gateway.service.results import error_object
from virtual_mcp.upstream.backend import BackendSession

logger = logging.getLogger(__name__)

# Sends the caller's request to its backend: with this asker for the backend's questions, its notifications to this
# sink (None: the request's own), and these params added.
Send = Callable[[Asker | None, Sink | None, Mapping[str, Any]], Awaitable[dict[str, Any]]]
_HELD_PER_CALLER = 32  # calls waiting for one caller's answers at once

Note = Callable[[dict[str, Any]], Awaitable[None]]


class Replicas(Protocol):
    """The other replicas, as far as held calls go (fleet/calls.py's ReplicaCalls)."""

    origin: str

    def serve(self, handler: Callable[[dict[str, Any], Note], Awaitable[dict[str, Any]]]) -> None: ...

    async def call(self, to: str, body: Mapping[str, Any], on_note: Note) -> dict[str, Any]: ...


class HeldElsewhereFailed(UpstreamRpcError):
    """What a held call on another replica ended with, as that replica answered it."""


class _NoteSink:
    """A held call's notifications, for a retry waiting on another replica."""

    def __init__(self, note: Note) -> None:
        self._note = note

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        await self._note({"method": method, "params": dict(params)})


@dataclass(eq=False)
class _Question:
    method: str
    params: dict[str, Any]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: object = None
    refused: AskFailed | None = None


class _Relay:
    """The held call's sink: the caller's request currently waiting on it, or none (its notifications dropped)."""

    def __init__(self) -> None:
        self.target: Sink | None = None

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        if self.target is not None:
            await self.target.notify(method, params)


class _Held:
    """A call in the gateway's task group whose backend may ask its caller questions meanwhile."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.relay = _Relay()
        self.scope = anyio.CancelScope()
        self.finished = False
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._questions: dict[str, _Question] = {}
        self._keys = itertools.count(1)
        self._changed = anyio.Event()
        self.on_end: Callable[[], object] | None = None

    async def run(self, send: Send) -> None:
        with self.scope:
            try:
                self.result = await send(self, self.relay, {})
            except Exception as exc:  # noqa: BLE001 - handed to the caller's request that waits for it
                self.error = exc
        if self.result is None and self.error is None:
            self.error = AskFailed(INVALID_PARAMS, "the call was cancelled while waiting for the caller's answer")
        self.finished = True
        self._changed.set()
        if self.on_end is not None:
            self.on_end()

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        question = _Question(method, params)
        key = f"q{next(self._keys)}"
        self._questions[key] = question
        self._changed.set()
        try:
            await question.answered.wait()
        finally:
            self._questions.pop(key, None)
        if question.refused is not None:
            raise question.refused
        if isinstance(question.answer, Mapping) and question.answer.get("error") is not None:
            raise AskFailed(INVALID_PARAMS, f"the caller did not answer {method}")
        return checked_answer(method, question.answer)

    def unanswered(self) -> dict[str, _Question]:
        return {key: q for key, q in self._questions.items() if not q.answered.is_set()}

    def answer(self, responses: Mapping[str, Any]) -> None:
        for key, question in self.unanswered().items():
            if key in responses:
                question.answer = responses[key]
            else:
                question.refused = AskFailed(INVALID_PARAMS, f"the caller's retry did not answer {question.method}")
            question.answered.set()

    async def settled(self) -> None:
        """Until the call has finished or has a question nobody has answered."""
        while not self.finished and not self.unanswered():
            self._changed = anyio.Event()
            await self._changed.wait()


class Rounds:
    """The held calls of one process, and the sealing of the states that name them."""

    def __init__(self, states: RequestStates | None = None, replicas: Replicas | None = None) -> None:
        self._states = states or RequestStates()
        self._held: dict[str, _Held] = {}
        self._tg: TaskGroup | None = None
        self._replicas = replicas
        if replicas is not None:
            replicas.serve(self._serve_elsewhere)

    def start(self, task_group: TaskGroup) -> None:
        self._tg = task_group

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(
        self, ctx: RequestContext, issued: Issued, params: Mapping[str, Any], send: Send, ttl: float
    ) -> dict[str, Any]:
        """The caller's request, one round of it: the backend's result, or `input_required` with what it asks."""
        state, responses = params.get("requestState"), params.get("inputResponses")
        if responses is not None and not isinstance(responses, Mapping):
            raise InvalidParams("inputResponses must be an object")
        if state is None:
            if responses is not None:
                raise InvalidParams("inputResponses came without the requestState of the result they answer")
            if ctx.declared and self._tg is not None:
                return await self._hold(ctx, issued, send, ttl)
            return self._outgoing(issued, await send(None, None, {}), ttl)
        content = await self._states.open(state, issued)
        if content.get("k") == "pass":
            again = {"inputResponses": dict(responses or {})}
            if isinstance(content.get("s"), str):
                again["requestState"] = content["s"]
            return self._outgoing(issued, await send(None, None, again), ttl)
        handle, holder = str(content.get("h")), content.get("o")
        replicas = self._replicas
        if replicas is not None and isinstance(holder, str) and holder != replicas.origin:
            return await self._go_on_elsewhere(replicas, holder, handle, dict(responses or {}), ctx.sink, issued, ttl)
        return await self._go_on(handle, responses or {}, ctx.sink, issued, ttl)

    async def _go_on(
        self, handle: str, responses: Mapping[str, Any], sink: Sink, issued: Issued, ttl: float
    ) -> dict[str, Any]:
        held = self._held.get(handle)
        if held is None or held.owner != issued.subject:
            raise InvalidParams("requestState names a call that is no longer waiting (it ended or timed out)")
        del self._held[handle]
        held.on_end = None
        held.answer(responses)
        return await self._wait(held, sink, issued, ttl)

    async def _go_on_elsewhere(
        self,
        replicas: Replicas,
        holder: str,
        handle: str,
        responses: dict[str, Any],
        sink: Sink,
        issued: Issued,
        ttl: float,
    ) -> dict[str, Any]:
        """The held call is on replica `holder`: it goes on there; its notes reach `sink` here."""

        async def on_note(note: dict[str, Any]) -> None:
            method, params = note.get("method"), note.get("params")
            if isinstance(method, str) and isinstance(params, dict):
                await sink.notify(method, params)

        body = {"h": handle, "r": responses, "i": dataclasses.asdict(issued), "t": ttl}
        try:
            answer = await replicas.call(holder, body, on_note)
        except Exception as exc:  # noqa: BLE001 - the fleet's ReplicaGone, told as the caller's to act on
            logger.info("a held call's replica did not go on with it: %s", exc)
            raise InvalidParams(
                "requestState names a call held by a gateway replica that is gone; send the request again without it"
            ) from None
        if isinstance(answer.get("ok"), dict):
            return dict(answer["ok"])
        given = answer.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        code, message = error.get("code"), error.get("message")
        raise HeldElsewhereFailed(
            code if isinstance(code, int) else INVALID_PARAMS,
            message if isinstance(message, str) else "the held call failed on another replica",
            error.get("data"),
        )

    async def _serve_elsewhere(self, body: dict[str, Any], note: Note) -> dict[str, Any]:
        """Another replica's retry for a call held here."""
        try:
            fields = body.get("i")
            issued = Issued(**fields) if isinstance(fields, dict) else None
            responses, ttl = body.get("r"), body.get("t")
            if issued is None or not isinstance(responses, dict) or not isinstance(ttl, int | float):
                raise InvalidParams("a held call's retry from another replica is malformed")
            result = await self._go_on(str(body.get("h")), responses, _NoteSink(note), issued, float(ttl))
        except (GatewayError, TypeError) as exc:
            return {"error": error_object(exc if isinstance(exc, GatewayError) else InvalidParams(str(exc)))}
        return {"ok": result}

    async def _hold(self, ctx: RequestContext, issued: Issued, send: Send, ttl: float) -> dict[str, Any]:
        assert self._tg is not None
        if sum(1 for held in self._held.values() if held.owner == issued.subject) >= _HELD_PER_CALLER:
            raise TooManyRequests(
                f"{_HELD_PER_CALLER} of your calls are waiting for your answers; answer or abandon one first",
                retry_after=5,
            )
        held = _Held(issued.subject)
        self._tg.start_soon(held.run, send)
        return await self._wait(held, ctx.sink, issued, ttl)

    async def _wait(self, held: _Held, sink: Sink, issued: Issued, ttl: float) -> dict[str, Any]:
        held.relay.target = sink
        try:
            await held.settled()
        except BaseException:
            held.scope.cancel()  # the caller's request in flight was cancelled: so is the call, at the backend
            raise
        finally:
            held.relay.target = None
        if held.finished:
            if held.error is not None:
                raise held.error
            assert held.result is not None
            return self._outgoing(issued, held.result, ttl)
        handle = secrets.token_urlsafe(16)
        self._held[handle] = held
        held.on_end = lambda: self._held.pop(handle, None)  # a caller who never comes back: forgotten at the end
        asked = {key: {"method": q.method, "params": q.params} for key, q in held.unanswered().items()}
        return {
            "resultType": "input_required",
            "inputRequests": asked,
            "requestState": self._states.seal(issued, ttl, {"k": "held", "h": handle, **self._holder()}),
        }

    async def call(
        self,
        ctx: RequestContext,
        issued: Issued,
        params: Mapping[str, Any],
        session: BackendSession,
        method: str,
        upstream_params: Mapping[str, Any],
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """`method` forwarded for the caller (relay.forward), in rounds for a 2026-07-28 caller."""
        if not ctx.modern:
            return await forward(ctx, session, method, upstream_params, timeout=timeout, headers=headers)

        async def send(asker: Asker | None, sink: Sink | None, extra: Mapping[str, Any]) -> dict[str, Any]:
            again = {**upstream_params, **extra}
            return await forward(ctx, session, method, again, timeout=timeout, headers=headers, asker=asker, sink=sink)

        return await self.run(ctx, issued, params, send, timeout)

    def asking(
        self, issued: Issued, requests: Mapping[str, Any], content: Mapping[str, Any], ttl: float
    ) -> dict[str, Any]:
        """An `input_required` result of the gateway's own: `requests` for the caller, `content` sealed in its state."""
        return {
            "resultType": "input_required",
            "inputRequests": dict(requests),
            "requestState": self._states.seal(issued, ttl, content),
        }

    def kind(self, params: Mapping[str, Any], issued: Issued) -> object:
        """The kind of the request's `requestState` (None: none, or not a good one), without using it."""
        state = params.get("requestState")
        return None if state is None else self._states.kind(state, issued)

    async def spend(self, params: Mapping[str, Any], issued: Issued) -> None:
        """Use the request's `requestState` (it answers one retry)."""
        await self._states.open(params.get("requestState"), issued)

    def _holder(self) -> dict[str, str]:
        """Which replica holds a call (in its state), in a fleet."""
        return {"o": self._replicas.origin} if self._replicas is not None else {}

    def _outgoing(self, issued: Issued, result: dict[str, Any], ttl: float) -> dict[str, Any]:
        """A backend's result for the caller: its own `input_required` state sealed in the gateway's."""
        if not spec_methods.is_input_required(result):
            return result
        content: dict[str, Any] = {"k": "pass"}
        backend_state = result.get("requestState")
        if isinstance(backend_state, str):
            content["s"] = backend_state
        return {**result, "requestState": self._states.seal(issued, ttl, content)}

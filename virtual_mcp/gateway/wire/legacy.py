"""The 2025-11-25 wire (the handshake era): `initialize` opens a session; every later request names it in
`Mcp-Session-Id`; a POST's answer is an event stream (its notifications, then its response); a GET opens the
session's stream for what the gateway sends outside requests (tool list changes); DELETE ends the session;
`notifications/cancelled` cancels a request of the same session. What a backend asks of the caller during a call
goes out on that call's stream, and the caller's answer comes back as a POSTed response (wire/asking.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
from mcp.shared.subscriptions import ServerEvent, ToolsListChanged
from mcp_types import JSONRPCNotification
from pydantic import ValidationError
from starlette.types import Receive, Send

from virtual_mcp.errors import INVALID_REQUEST, PARSE_ERROR, GatewayError, RequestCancelled
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.service.results import error_object
from virtual_mcp.gateway.wire import framing
from virtual_mcp.gateway.wire.asking import SessionAsker, StreamAsker, is_response
from virtual_mcp.gateway.wire.keepalive import Keepalive
from virtual_mcp.gateway.wire.messages import accepts, is_request
from virtual_mcp.gateway.wire.session_quota import SessionQuota
from virtual_mcp.gateway.wire.sessions import Session, SessionTable
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.upstream.capabilities import relayable

logger = logging.getLogger(__name__)
SESSION_HEADER = "mcp-session-id"
# A backend's question outside any call (roots/list) waits this long for the session's answer on its GET stream.
_OUTSIDE_QUESTION_SECONDS = 120.0
_STREAM_BACKLOG = 16  # messages waiting for a slow GET stream; past that the stream is ended (the client reopens)


def _session_header(session: Session) -> framing.Headers:
    return ((SESSION_HEADER.encode(), session.id.encode()),)


class _GetStream:
    """A session's GET stream: messages queue here and its own request task writes them."""

    def __init__(self) -> None:
        self._send, self.messages = anyio.create_memory_object_stream[Mapping[str, Any]](_STREAM_BACKLOG)

    def push(self, message: Mapping[str, Any]) -> None:
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            logger.info("a session's GET stream is not being read; ending it")
            self._send.close()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def close(self) -> None:
        self._send.close()


class LegacyWire:
    def __init__(self, service: McpService, table: SessionTable, quota: SessionQuota, keepalive: Keepalive) -> None:
        self._service = service
        self._table = table
        self._quota = quota
        self._keepalive = keepalive

    def on_event(self, event: ServerEvent) -> None:
        """A change the endpoint's callers hear about: to every session with a GET stream (a bus listener)."""
        if isinstance(event, ToolsListChanged):
            message = framing.notification("notifications/tools/list_changed", None)
            for session in self._table.sessions():
                if session.stream is not None:
                    session.stream.push(message)

    async def _session(self, caller: Caller, headers: Mapping[str, str], send: Send) -> Session | None:
        """The request's session; None once the request has been refused."""
        session_id = headers.get(SESSION_HEADER)
        if session_id is None:
            await framing.refuse(send, 400, "Bad Request: Missing session ID")
            return None
        session = await self._table.locate(session_id, caller.principal.subject)
        if session is None:
            await framing.refuse(send, 404, "Session not found")
        return session

    async def post(
        self,
        caller: Caller,
        trace_id: str,
        message: dict[str, Any] | None,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        has_json, has_sse = accepts(headers)
        if not (has_json and has_sse):
            await framing.refuse(
                send, 406, "Not Acceptable: Client must accept both application/json and text/event-stream"
            )
            return
        if message is None:
            await framing.refuse(send, 400, "Parse error: the body is not JSON", PARSE_ERROR)
            return
        if "method" in message and "id" in message and not is_request(message):
            await framing.refuse(send, 400, "Invalid Request: params must be an object")
            return
        if message.get("method") == "initialize" and is_request(message):
            await self._initialize(caller, message, headers, send)
            return
        session = await self._session(caller, headers, send)
        if session is None:
            return
        if is_response(message):
            # The caller's answer to a question a backend asked it: to that question, or refused.
            if not await self._table.answer(session, message):
                shown = str(message.get("id"))[:64]
                await framing.refuse(
                    send, 400, f"Bad Request: no question with id {shown!r} awaits an answer in this session"
                )
                return
            await framing.send_json(send, None, 202, _session_header(session))
            return
        if not is_request(message):
            # A notification: accepted (202) and, for a cancellation, acted on.
            if message.get("method") == "notifications/cancelled":
                await self._cancel(session, message)
            await framing.send_json(send, None, 202, _session_header(session))
            return
        await self._serve(caller, trace_id, session, message, send)

    async def _initialize(
        self, caller: Caller, message: dict[str, Any], headers: Mapping[str, str], send: Send
    ) -> None:
        session_id = headers.get(SESSION_HEADER)
        request_id = message["id"]
        reservation = None
        if session_id is not None:
            session = await self._table.locate(session_id, caller.principal.subject)
            if session is None:
                await framing.refuse(send, 404, "Session not found")
                return
        else:
            try:  # a request that opens a session
                reservation = await self._quota.reserve(caller.principal)
            except GatewayError as exc:
                await framing.refuse_with(send, exc)
                return
            session = None
        try:
            try:
                result, version = await self._service.initialize(caller, message.get("params"))
            except GatewayError as exc:
                answer = framing.Answer(send, self._keepalive, json_allowed=False)
                await answer.finish(framing.error(request_id, error_object(exc)))
                return
            place = None
            if session is None:
                if reservation is not None:  # the reservation becomes the session itself: never counted twice
                    place = self._quota.opened(reservation)
                session = self._table.open_session(caller.principal.subject, version)
            session.version = version
            session.declared = relayable((message.get("params") or {}).get("capabilities"))
            await self._table.share(session, place)
            answer = framing.Answer(send, self._keepalive, json_allowed=False, headers=_session_header(session))
            await answer.finish(framing.response(request_id, result))
        finally:
            if reservation is not None:  # (nothing to release once the session is opened)
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):  # a cancelled opener frees its place
                    await self._quota.release(reservation)

    async def _serve(
        self, caller: Caller, trace_id: str, session: Session, message: dict[str, Any], send: Send
    ) -> None:
        request_id = message["id"]
        answer = framing.Answer(send, self._keepalive, json_allowed=False, headers=_session_header(session))
        with self._table.holding(session), self._table.call(session, request_id) as call:
            if call is None:
                failure = {"code": INVALID_REQUEST, "message": "a request with this id is in flight on this session"}
                await answer.finish(framing.error(request_id, failure))
                return
            outcome: dict[str, Any] | None = None
            asker = StreamAsker(session.questions, answer)
            ctx = RequestContext(
                caller,
                session.version,
                request_id,
                trace_id,
                answer,
                session,
                session.declared,
                asker,
                session,
                SessionAsker(session, _OUTSIDE_QUESTION_SECONDS),
            )
            with call.cancel:
                try:
                    result = await self._service.handle(ctx, message["method"], message.get("params"))
                    outcome = framing.response(request_id, result)
                except Exception as exc:  # noqa: BLE001 - the top of a request: rendered, never raised to the server
                    outcome = framing.error(request_id, error_object(exc))
            if call.session_ended:  # DELETE, idle expiry or shutdown: the stream just ends
                await answer.finish(None)
                return
            if call.cancel.cancel_called:
                outcome = framing.error(request_id, error_object(RequestCancelled()))
            await answer.finish(outcome)

    async def _cancel(self, session: Session, message: Mapping[str, Any]) -> None:
        try:
            notification = JSONRPCNotification.model_validate(message)
        except ValidationError:
            return
        params = notification.params or {}
        request_id = params.get("requestId")
        if isinstance(request_id, int | str) and not isinstance(request_id, bool):
            await self._table.cancel(session, request_id)

    async def get(self, caller: Caller, headers: Mapping[str, str], receive: Receive, send: Send) -> None:
        _, has_sse = accepts(headers)
        if not has_sse:
            await framing.refuse(send, 406, "Not Acceptable: Client must accept text/event-stream")
            return
        session = await self._session(caller, headers, send)
        if session is None:
            return
        if session.stream is not None:
            await framing.refuse(send, 409, "Conflict: Only one SSE stream is allowed per session")
            return
        stream = session.stream = _GetStream()
        session.stream_opened.set()
        answer = framing.Answer(send, self._keepalive, json_allowed=False, headers=_session_header(session))
        try:
            with self._table.holding(session):
                await answer.ping()  # the stream starts now: the client knows it is open
                async with anyio.create_task_group() as tg:

                    async def watch_disconnect() -> None:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        answer.abandon()
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch_disconnect)
                    async for message in stream.messages:
                        await answer.event(message)
                    tg.cancel_scope.cancel()
                await answer.finish(None)
        finally:
            if session.stream is stream:
                session.stream = None
            stream.close()

    async def delete(self, caller: Caller, headers: Mapping[str, str], send: Send) -> None:
        session = await self._session(caller, headers, send)
        if session is None:
            return
        await self._table.delete(session)
        await framing.send_json(send, None, 200, _session_header(session))

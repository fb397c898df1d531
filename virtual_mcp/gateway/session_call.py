"""The `tools/call` fast path for 2025-11-25 (handshake-era) sessions.

The SDK serves every request of a session through its session transport: the request becomes a message on the
session's stream, a dispatcher task runs it through the server's middlewares, and sse-starlette writes the answer
from a task group of its own (about 1.8 ms of CPU per call, more than everything else the gateway does). For a
plain `tools/call` on a live, initialised session this path writes the same event stream itself: the SDK's
headers, each log message the backend sends as it comes (the session's `logging/setLevel` choice applies), then
the answer, each serialised as the SDK serialises it; a keepalive comment every 15 s, as sse-starlette sends
(all calls' from one task, `Keepalive`: a call that ends sooner costs no task of its own, nor the garbage cycles a
cancelled task leaves behind for the collector).

What the session needs is kept: the call holds the session's idle countdown from its arrival, like any request
the transport serves; a `notifications/cancelled` for it (one the SDK would deliver: the same session, its owner,
a well-formed notification) cancels it, which the caller hears as the SDK's own "Request cancelled" error; and
when the session ends (DELETE, idle expiry, shutdown) its calls are cancelled and their streams end without an
answer, as the SDK path's do. Anything else (another method, a progress token, a request the SDK would refuse, a
session that is unknown, someone else's or ending, a name the caller may not use) is left to the SDK path before
anything has happened that cannot happen twice. (Looking a name up may refresh the tool catalog, a cache both
paths share; what it fetched is there for the SDK path too.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.streamable_http import REQUEST_CANCELLED, StreamableHTTPServerTransport, check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params, handler_exception_to_error_data
from mcp_types import (
    INTERNAL_ERROR,
    LOG_LEVEL_META_KEY,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from mcp_types import methods as spec_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from virtual_mcp.gateway.forward import at_or_above, for_version, log_message, passthrough_meta
from virtual_mcp.gateway.keepalive import Keepalive
from virtual_mcp.gateway.plain_call import PlainCalls, sieve
from virtual_mcp.gateway.views import Route
from virtual_mcp.outbound.credentials import Caller

logger = logging.getLogger(__name__)

_SESSION_HEADER = b"mcp-session-id"
_CANCELLED = ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
_VERSION_HEADER = b"mcp-protocol-version"


class SessionRegistry:
    """What the fast path reads of a session: its transport and owner (the SDK's session manager) and its connection
    and `logging/setLevel` choice (the gateway's SessionTracker, which sees every session's first request)."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        sessions: Mapping[str, Any],
        log_levels: Mapping[str, str],
    ) -> None:
        self._manager = manager
        self._sessions = sessions
        self._log_levels = log_levels

    def live(self, session_id: str, user: object) -> tuple[StreamableHTTPServerTransport, Connection] | None:
        """The session's transport and connection if it is open, owned by `user`, initialised and not ending."""
        manager = self._manager
        transport = manager._server_instances.get(session_id)  # the SDK offers no public lookup
        if transport is None or transport.is_terminated:
            return None
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if requestor != manager._session_owners.get(session_id):
            return None
        if transport.idle_scope is not None and transport.idle_scope.cancel_called:
            return None
        session = self._sessions.get(session_id)
        connection = getattr(session, "_connection", None)
        if not isinstance(connection, Connection) or not connection.initialize_accepted:
            return None
        return transport, connection

    def log_level(self, session_id: str) -> str | None:
        return self._log_levels.get(session_id)

    @property
    def open(self) -> int:
        """Sessions of this endpoint that are open (or being opened)."""
        return len(self._manager._server_instances)

    def owned_by(self, subject: str) -> int:
        """How many of them the principal with this subject opened."""
        return sum(1 for owner in self._manager._session_owners.values() if owner["subject"] == subject)


@dataclass(frozen=True, slots=True)
class _Request:
    scope: Scope
    caller: Caller
    session_id: str
    version: str  # the session's negotiated protocol version
    id: types.RequestId
    meta: Mapping[str, Any]


@dataclass(eq=False)
class _Call:
    """A call this path is answering: its cancel scope, and whether its session ended under it."""

    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    session_ended: bool = False


class SessionToolCalls:
    """`tools/call` on one endpoint, for handshake-era session requests that need nothing but the call."""

    def __init__(self, plain: PlainCalls, sessions: SessionRegistry, keepalive: Keepalive) -> None:
        self._plain = plain
        self._sessions = sessions
        self._keepalive = keepalive
        # Per session (while it lasts): the calls in flight on this path, by request id as the SDK correlates ids.
        self._in_flight: dict[str, dict[types.RequestId, _Call]] = {}

    async def __call__(
        self, message: Mapping[str, Any], caller: Caller, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Answer the request and return True, or return False having done nothing (the SDK path takes it)."""
        method = message.get("method")
        if method == "notifications/cancelled":
            self._cancel(message, scope)
            return False  # the SDK path answers it (202) and ignores an id it does not know
        if method != "tools/call":
            return False
        session_id = _session_of(scope)
        live = self._sessions.live(session_id, scope.get("user")) if session_id is not None else None
        if session_id is None or live is None:
            return False
        transport, connection = live
        plain = _plain_request(message, scope, connection.protocol_version)
        if plain is None:
            return False
        request_id, name, arguments, meta = plain
        call = self._register(session_id, connection, request_id)
        if call is None:
            return False  # that id is in flight already: the SDK path's to answer
        stream: _EventStream | None = None
        try:
            # Held and cancellable from the start, as a request the transport serves is.
            async with _holding(transport):
                outcome: JSONRPCResponse | JSONRPCError | None = None
                with call.cancel:
                    route = await self._plain.route(caller, name)
                    if route is None:
                        return False  # a refusal: the SDK path answers and audits it
                    # From here on the call is this path's: obtaining the credential may already talk to a provider.
                    stream = _EventStream(send, session_id)
                    await stream.start()
                    with self._keepalive.watching(stream):
                        request = _Request(scope, caller, session_id, connection.protocol_version, request_id, meta)
                        outcome = await self._outcome(request, stream, name, arguments, route)
                if call.session_ended:  # DELETE, idle expiry or shutdown: as on the SDK path, the stream just ends
                    if stream is None:
                        return False  # nothing happened yet: the SDK path answers for the ended session
                    await stream.close()
                    return True
                if stream is None:  # cancelled while the tool was being looked up
                    stream = _EventStream(send, session_id)
                    await stream.start()
                if outcome is None or call.cancel.cancel_called:
                    # A cancelled request's answer on this era's wire, whatever the call made of its cancellation.
                    outcome = JSONRPCError(jsonrpc="2.0", id=request_id, error=_CANCELLED)
                await stream.event(outcome, last=True)
        finally:
            self._forget(session_id, request_id, call)
            if stream is not None:
                stream.abandon()  # no keepalive comment after the handler is done, however it ended
        return True

    async def _outcome(
        self, request: _Request, stream: _EventStream, name: str, arguments: dict[str, Any], route: Route
    ) -> JSONRPCResponse | JSONRPCError:
        """The call's answer as the SDK's dispatcher writes it; the backend's log messages are relayed as the SDK
        path relays them (all levels upstream, the session's `logging/setLevel` choice applied here)."""
        levels = at_or_above(self._sessions.log_level(request.session_id))
        upstream_meta = passthrough_meta(request.meta)
        upstream_meta[LOG_LEVEL_META_KEY] = "debug"

        async def relay(notification: dict[str, Any]) -> None:
            params = notification.get("params")
            if notification.get("method") != "notifications/message" or not isinstance(params, dict):
                return
            logged = log_message(params, levels)
            if logged is None:
                return
            dumped = logged.model_dump(by_alias=True, mode="json", exclude_none=True)
            relayed = types.JSONRPCNotification(jsonrpc="2.0", method=dumped["method"], params=dumped["params"])
            await stream.event(relayed)

        try:
            result = await self._plain.call(request.scope, request.caller, name, route, arguments, upstream_meta, relay)
            return JSONRPCResponse(jsonrpc="2.0", id=request.id, result=_wire(request.version, result))
        except Exception as exc:  # noqa: BLE001 - rendered as the dispatcher renders a handler's exception
            return JSONRPCError(jsonrpc="2.0", id=request.id, error=_error_data(exc))

    def _register(self, session_id: str, connection: Connection, request_id: types.RequestId) -> _Call | None:
        calls = self._in_flight.get(session_id)
        if calls is None:
            calls = self._in_flight[session_id] = {}
            # When the session ends (DELETE, idle expiry, shutdown), its calls end too, as the SDK path's do.
            connection.exit_stack.callback(self._session_ended, session_id)
        key = coerce_request_id(request_id)
        if key in calls:
            return None
        call = calls[key] = _Call()
        return call

    def _forget(self, session_id: str, request_id: types.RequestId, call: _Call) -> None:
        calls = self._in_flight.get(session_id)
        key = coerce_request_id(request_id)
        if calls is not None and calls.get(key) is call:
            del calls[key]

    def _session_ended(self, session_id: str) -> None:
        for call in self._in_flight.pop(session_id, {}).values():
            call.session_ended = True
            call.cancel.cancel()

    def _cancel(self, message: Mapping[str, Any], scope: Scope) -> None:
        """Apply a `notifications/cancelled` to a call on this path if the SDK path would deliver it: on a live
        session of the caller's, a well-formed notification the transport accepts."""
        session_id = _session_of(scope)
        if session_id is None or session_id not in self._in_flight or not _acceptable(scope):
            return
        if self._sessions.live(session_id, scope.get("user")) is None:
            return
        try:
            notification = jsonrpc_message_adapter.validate_python(message, by_name=False)
        except ValidationError:
            return
        if not isinstance(notification, types.JSONRPCNotification):
            return
        request_id = cancelled_request_id_from_params(notification.params)
        call = self._in_flight[session_id].get(coerce_request_id(request_id)) if request_id is not None else None
        if call is not None:
            call.cancel.cancel()


class _EventStream:
    """One POST's answer as the SDK writes it: an event stream of JSON-RPC messages, with keepalive comments."""

    def __init__(self, send: Send, session_id: str) -> None:
        self._send = send
        self._session_id = session_id
        self._lock = anyio.Lock()
        self._ended = False

    async def start(self) -> None:
        headers = [
            (b"cache-control", b"no-cache, no-transform"),
            (b"connection", b"keep-alive"),
            (b"content-type", b"text/event-stream"),
            (_SESSION_HEADER, self._session_id.encode("latin-1")),
            (b"x-accel-buffering", b"no"),
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(
        self, message: types.JSONRPCNotification | JSONRPCResponse | JSONRPCError, last: bool = False
    ) -> None:
        data = message.model_dump_json(by_alias=True, exclude_unset=True).encode()
        await self._write(b"event: message\r\ndata: " + data + b"\r\n\r\n", last)

    async def close(self) -> None:
        """End the stream without an answer (the session ended under the call)."""
        await self._write(b"", True)

    def abandon(self) -> None:
        self._ended = True

    async def ping(self) -> None:
        """A keepalive comment, as sse-starlette writes it."""
        await self._write(f": ping - {datetime.now(UTC)}\r\n\r\n".encode(), False)

    async def _write(self, body: bytes, last: bool) -> None:
        async with self._lock:
            if self._ended:
                return  # a keepalive that was due as the answer went out
            self._ended = last
            await self._send({"type": "http.response.body", "body": body, "more_body": not last})


@asynccontextmanager
async def _holding(transport: StreamableHTTPServerTransport) -> AsyncIterator[None]:
    """The call holds the session as a request the transport serves does: no idle expiry while it runs, and the
    countdown restarts when the last request ends (StreamableHTTPServerTransport.handle_request's accounting)."""
    idle = transport.idle_scope
    timeout = transport._idle_timeout  # the transport's own accounting, kept in step with it
    if idle is None or timeout is None:
        yield
        return
    transport._requests_in_flight += 1
    idle.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle.deadline = anyio.current_time() + timeout


def _session_of(scope: Scope) -> str | None:
    """The request's session id, if it is a handshake-era session request the SDK would route to that session
    (`Mcp-Protocol-Version` absent or a handshake version); None for anything else, a repeated header included."""
    session_id = version = None
    for name, value in scope["headers"]:
        if name == _SESSION_HEADER:
            if session_id is not None:
                return None
            session_id = value.decode("latin-1")
        elif name == _VERSION_HEADER:
            if version is not None:
                return None
            version = value.decode("latin-1")
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    return session_id


def _acceptable(scope: Scope) -> bool:
    """The media types the SDK's transport requires of a POST (its security check, then its own)."""
    content_type = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"content-type"), "")
    if not content_type.lower().startswith("application/json"):
        return False
    if "application/json" not in (part.strip() for part in content_type.split(";")[0].split(",")):
        return False
    return check_accept_headers(Request(scope)) == (True, True)


def _plain_request(
    message: Mapping[str, Any], scope: Scope, version: str
) -> tuple[types.RequestId, str, dict[str, Any], Mapping[str, Any]] | None:
    """(id, name, arguments, _meta) of a `tools/call` the SDK path would accept and that wants no progress; None
    for anything else (including what the transport would refuse: the media types)."""
    if not _acceptable(scope):
        return None
    try:
        request = jsonrpc_message_adapter.validate_python(message, by_name=False)
        if not isinstance(request, JSONRPCRequest):
            return None
        spec_methods.validate_client_request("tools/call", version, request.params)
    except (ValidationError, KeyError, ValueError):
        return None
    params = request.params or {}
    name, arguments, meta = params.get("name"), params.get("arguments") or {}, params.get("_meta") or {}
    if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(meta, Mapping):
        return None
    if meta.get("progressToken") is not None:
        return None
    return request.id, name, arguments, meta


def _wire(version: str, result: dict[str, Any]) -> dict[str, Any]:
    """The backend's result as the SDK path sends it to a handshake-era session: sieved by that version's surface."""
    return sieve("tools/call", version, for_version(result, version))


def _error_data(exc: Exception) -> ErrorData:
    error = handler_exception_to_error_data(exc)
    if error is None:
        logger.exception("internal error serving tools/call")
        return ErrorData(code=INTERNAL_ERROR, message="Internal error")
    return error

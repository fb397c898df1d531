"""The front door of every MCP endpoint: origin check, authentication, header overrides, endpoint access, body
checks. Only a request that passes all of them reaches the SDK's streamable-HTTP transport."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from virtual_mcp.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    InvalidToken,
    MalformedCredentialRequest,
    TooManyRequests,
    Unauthorized,
)
from virtual_mcp.fields import parse_authority
from virtual_mcp.gateway.auditing import Auditor
from virtual_mcp.gateway.http import (
    error_response,
    gateway_error_response,
    is_json_media_type,
    parse_envelope,
    read_body,
    replay_body,
    requested_method,
)
from virtual_mcp.gateway.request_scope import request_id_in
from virtual_mcp.gateway.session_quota import SessionQuota
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.origin import OriginPolicy
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.outbound.overrides import HEADER as OVERRIDES_HEADER
from virtual_mcp.outbound.overrides import parse_overrides
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, EndpointKind, Registry
from virtual_mcp.timing import phase
from virtual_mcp.types import Principal

logger = logging.getLogger(__name__)
CALLER_STATE_KEY = "caller"
# The caller of the request being served, for SDK callbacks that receive no request (Mcp-Param schema lookup).
CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("virtual_mcp_caller", default=None)


class FastPath(Protocol):
    """Answers a request without the SDK's transport if it can (True), or does nothing (False)."""

    async def __call__(
        self, message: Mapping[str, Any], caller: Caller, scope: Scope, receive: Receive, send: Send
    ) -> bool: ...


class EndpointApp:
    def __init__(
        self,
        endpoint: Endpoint,
        manager: StreamableHTTPSessionManager,
        registry: Registry,
        authenticator: Authenticator,
        metadata: ResourceMetadata,
        max_body: int,
        auditor: Auditor,
        quota: SessionQuota,
        fast: FastPath | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._auditor = auditor
        self._quota = quota
        self._fast = fast
        self._manager = manager
        self._registry = registry
        self._authenticator = authenticator
        self._metadata = metadata
        self._max_body = max_body
        self._gates = tuple({m.gate for m in endpoint.members})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        try:
            with phase("auth"):
                auth = await self._authenticator.authenticate(
                    headers, scope.get("query_string", b"").decode("latin-1"), client[0] if client else None
                )
        except Unauthorized as exc:
            await unauthorized(exc, self._metadata, self._endpoint.path, scope, headers)(scope, receive, send)
            return
        except TooManyRequests as exc:
            await gateway_error_response(exc)(scope, receive, send)
            return
        try:
            with phase("policy"):
                # Access first: a caller who may not use this server learns nothing else about it (an unconfigured
                # server path answers this same 403 whatever else is wrong with the request).
                self._check_access(auth.principal)
                overrides = parse_overrides(headers.get(OVERRIDES_HEADER), self._registry, auth.principal, auth.bearer)
        except GatewayError as exc:
            if isinstance(exc, Forbidden):
                method = await requested_method(scope, receive, self._max_body)
                ref = self._endpoint.ref
                await self._auditor.refused(
                    request_id_in(scope),
                    auth.principal,
                    self._endpoint.path,
                    ref.key if ref else None,
                    method,
                    exc.message,
                )
            await gateway_error_response(exc)(scope, receive, send)
            return
        base = self._metadata.base(scope.get("scheme", "http"), headers.get("host", "localhost"))
        caller = Caller(auth, overrides, base)
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        # Session ownership: the SDK binds a 2025-11-25 session to the principal that opened it.
        scope["user"] = AuthenticatedUser(
            AccessToken(token="", client_id=auth.principal.subject, scopes=[], subject=auth.principal.subject)
        )
        message = None
        if scope.get("method") == "POST":
            if not is_json_media_type(headers.get("content-type")):
                await error_response(
                    415, BadRequest.jsonrpc_code, "Unsupported Media Type: Content-Type must be application/json"
                )(scope, receive, send)
                return
            body = await read_body(scope, receive, self._max_body)
            if not isinstance(body, bytes):
                await body(scope, receive, send)
                return
            message, problem = parse_envelope(body)
            if problem is not None:
                await error_response(400, BadRequest.jsonrpc_code, f"Invalid Request: {problem}")(scope, receive, send)
                return
            receive = replay_body(body, receive)
            if (
                message is not None
                and self._fast is not None
                and await self._fast(message, caller, scope, receive, send)
            ):
                return
        release = None
        if message is not None and message.get("method") == "initialize" and "mcp-session-id" not in headers:
            try:  # a request that opens a 2025-11-25 session
                release = self._quota.reserve(auth.principal)
            except GatewayError as exc:
                await gateway_error_response(exc)(scope, receive, send)
                return
        reset = CURRENT_CALLER.set(caller)
        try:
            await self._manager.handle_request(scope, receive, send)
        finally:
            CURRENT_CALLER.reset(reset)
            if release is not None:
                release()

    def _check_access(self, principal: Principal) -> None:
        """A single server or virtual server the caller may not use at all is 403; `/mcp` only filters."""
        if self._endpoint.kind is EndpointKind.AGGREGATE:
            return
        if not any(decide(principal, self._registry.gates[g]).allowed for g in self._gates):
            raise Forbidden(f"Forbidden: you are not authorized for {self._endpoint.title}")


def unauthorized(
    exc: Unauthorized, metadata: ResourceMetadata, path: str, scope: Scope, headers: Mapping[str, str]
) -> Response:
    """A 401 (or 400 invalid_request) whose challenge points at the RFC 9728 document for `path`."""
    base = metadata.base(scope.get("scheme", "http"), headers.get("host", "localhost"))
    error = None
    if isinstance(exc, InvalidToken):
        error = "invalid_token"
    elif isinstance(exc, MalformedCredentialRequest):
        error = "invalid_request"
    challenge = metadata.challenge(base, path, error, getattr(exc, "reason", None))
    logger.info("refused %s on %s: %s", scope.get("method"), path, exc.message)
    return gateway_error_response(exc, {"WWW-Authenticate": challenge})


# Headers a request carries at most once. Two copies are refused before anything reads either: otherwise one part
# of the gateway (or the SDK, or a proxy in front) may act on the first copy and another on the last.
SINGLE_VALUED: Mapping[bytes, str] = {
    b"host": "Host",
    b"origin": "Origin",
    b"authorization": "Authorization",
    b"mcp-session-id": "Mcp-Session-Id",
    b"mcp-protocol-version": "MCP-Protocol-Version",
    b"mcp-method": "Mcp-Method",
    b"mcp-name": "Mcp-Name",
    b"last-event-id": "Last-Event-ID",
    OVERRIDES_HEADER.encode(): OVERRIDES_HEADER,
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
}


class FrontGuard:
    """Outermost ASGI layer of every route: a request naming a single-valued header twice is refused (400); then,
    for every route but /healthz, DNS-rebinding protection: a well-formed Host the gateway answers to (400 when
    missing or malformed, 421 when foreign), then a browser Origin it trusts (403)."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy, endpoints: Mapping[str, ASGIApp] | None = None) -> None:
        self._app = app
        self._origins = origins
        # The MCP endpoints, reached directly (no routing table walk, no exception middlewares) for the methods
        # they serve; anything else goes through the application's router.
        self._endpoints = dict(endpoints or {})
        self._verdicts: dict[bytes, tuple[int, str] | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            endpoint = self._endpoints.get(scope.get("path", ""))
            if endpoint is not None and scope.get("method") in _ENDPOINT_METHODS:
                await endpoint(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        seen: set[bytes] = set()
        host = origin = None
        for name, value in scope.get("headers", []):
            if name in SINGLE_VALUED:
                if name in seen:
                    return error_response(
                        400,
                        BadRequest.jsonrpc_code,
                        f"Bad Request: repeated {SINGLE_VALUED[name]} header (send it once)",
                    )
                seen.add(name)
                if name == b"host":
                    host = value
                elif name == b"origin":
                    origin = value
        if scope.get("path") == "/healthz":
            return None  # load balancers probe it by address, under any Host
        if host is None:
            return error_response(400, BadRequest.jsonrpc_code, "Bad Request: missing Host header")
        verdict = self._host_verdict(host)
        if verdict is not None:
            return error_response(verdict[0], BadRequest.jsonrpc_code, verdict[1])
        if origin is not None and not self._origins.allows(origin.decode("latin-1"), host.decode("latin-1")):
            return error_response(403, BadRequest.jsonrpc_code, "Forbidden: foreign Origin")
        return None

    def _host_verdict(self, host: bytes) -> tuple[int, str] | None:
        """Why this Host is refused (status, message), or None; remembered per value (a few in practice, and
        parsing one costs more than the rest of this layer), up to a bound that any number of made-up ones cannot
        exceed."""
        if host in self._verdicts:
            return self._verdicts[host]
        authority = parse_authority(host.decode("latin-1"))
        verdict: tuple[int, str] | None = None
        if authority is None:
            verdict = (400, "Bad Request: malformed Host header (expected host[:port])")
        elif not self._origins.allows_authority(authority):
            verdict = (421, "Misdirected Request: unknown Host")
        if len(self._verdicts) >= _MAX_VERDICTS:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return verdict


_MAX_VERDICTS = 1024
_ENDPOINT_METHODS = frozenset({"GET", "POST", "DELETE"})

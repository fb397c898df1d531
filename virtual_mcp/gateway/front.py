"""The front door of every MCP endpoint: origin check, authentication, header overrides, endpoint access, body
checks. Only a request that passes all of them reaches the SDK's streamable-HTTP transport."""

from __future__ import annotations

import logging

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Receive, Scope, Send

from virtual_mcp.errors import BadRequest, Forbidden, GatewayError, InvalidToken, Unauthorized
from virtual_mcp.gateway.http import envelope_problem, error_response, gateway_error_response, read_body, replay_body
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.origin import OriginPolicy
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.outbound.overrides import HEADER as OVERRIDES_HEADER
from virtual_mcp.outbound.overrides import parse_overrides
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, EndpointKind, Registry
from virtual_mcp.types import Principal

logger = logging.getLogger(__name__)
CALLER_STATE_KEY = "caller"


class EndpointApp:
    def __init__(
        self,
        endpoint: Endpoint,
        manager: StreamableHTTPSessionManager,
        registry: Registry,
        origins: OriginPolicy,
        authenticator: Authenticator,
        metadata: ResourceMetadata,
        max_body: int,
    ) -> None:
        self._endpoint = endpoint
        self._manager = manager
        self._registry = registry
        self._origins = origins
        self._authenticator = authenticator
        self._metadata = metadata
        self._max_body = max_body
        self._gates = tuple({m.gate for m in endpoint.members})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self._origins.allows(headers.get("origin"), headers.get("host")):
            await error_response(403, BadRequest.jsonrpc_code, "Forbidden: foreign Origin")(scope, receive, send)
            return
        client = scope.get("client")
        try:
            auth = await self._authenticator.authenticate(
                headers, scope.get("query_string", b"").decode("latin-1"), client[0] if client else None
            )
        except Unauthorized as exc:
            base = self._metadata.base(scope.get("scheme", "http"), headers.get("host", "localhost"))
            error = "invalid_token" if isinstance(exc, InvalidToken) else None
            challenge = self._metadata.challenge(base, self._endpoint.path, error, getattr(exc, "reason", None))
            logger.info("refused %s on %s: %s", scope.get("method"), self._endpoint.path, exc.message)
            await gateway_error_response(exc, {"WWW-Authenticate": challenge})(scope, receive, send)
            return
        try:
            overrides = parse_overrides(headers.get(OVERRIDES_HEADER), self._registry, auth.principal, auth.bearer)
            self._check_access(auth.principal)
        except GatewayError as exc:
            await gateway_error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE_KEY] = Caller(auth, overrides)
        if scope.get("method") == "POST":
            body = await read_body(scope, receive, self._max_body)
            if not isinstance(body, bytes):
                await body(scope, receive, send)
                return
            problem = envelope_problem(body)
            if problem is not None:
                await error_response(400, BadRequest.jsonrpc_code, f"Invalid Request: {problem}")(scope, receive, send)
                return
            receive = replay_body(body, receive)
        await self._manager.handle_request(scope, receive, send)

    def _check_access(self, principal: Principal) -> None:
        """A single server or virtual server the caller may not use at all is 403; `/mcp` only filters."""
        if self._endpoint.kind is EndpointKind.AGGREGATE:
            return
        if not any(decide(principal, self._registry.gates[g]).allowed for g in self._gates):
            raise Forbidden(f"Forbidden: you are not authorized for {self._endpoint.title}")

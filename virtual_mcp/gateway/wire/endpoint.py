"""One MCP endpoint over HTTP, for the caller `inbound.middleware.Authenticate` let in: may they use it, their
header overrides, the body; then the wire of the caller's protocol era (a request naming a 2026-07-28 version in
`Mcp-Protocol-Version` is sessionless; anything else is a 2025-11-25 session's)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from mcp.server.subscriptions import SubscriptionBus
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import Forbidden, GatewayError
from virtual_mcp.gateway.http import (
    is_json_media_type,
    parse_envelope,
    read_body,
    requested_method,
)
from virtual_mcp.gateway.middleware.request_scope import request_id_in
from virtual_mcp.gateway.service.auditing import Auditor
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.wire import framing
from virtual_mcp.gateway.wire.keepalive import Keepalive
from virtual_mcp.gateway.wire.legacy import LegacyWire
from virtual_mcp.gateway.wire.listen import Listens
from virtual_mcp.gateway.wire.modern import ModernWire
from virtual_mcp.gateway.wire.session_quota import SessionQuota
from virtual_mcp.gateway.wire.sessions import SessionTable
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.middleware import authentication
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.outbound.overrides import HEADER as OVERRIDES_HEADER
from virtual_mcp.outbound.overrides import parse_overrides
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, EndpointKind, Registry
from virtual_mcp.timing import phase
from virtual_mcp.types import Principal

logger = logging.getLogger(__name__)
_VERSION_HEADER = b"mcp-protocol-version"


class EndpointApp:
    def __init__(
        self,
        endpoint: Endpoint,
        service: McpService,
        sessions: SessionTable,
        registry: Registry,
        settings: GatewaySettings,
        metadata: ResourceMetadata,
        auditor: Auditor,
        quota: SessionQuota,
        keepalive: Keepalive,
        bus: SubscriptionBus,
    ) -> None:
        self._endpoint = endpoint
        self._registry = registry
        self._metadata = metadata
        self._auditor = auditor
        self._max_body = settings.max_request_body_bytes
        self._gates = tuple({m.gate for m in endpoint.members})
        self.sessions = sessions
        quota.watch(sessions)
        self._bus = bus
        self._listens = Listens(bus, keepalive, service)
        self._legacy = LegacyWire(service, self.sessions, quota, keepalive)
        self._modern = ModernWire(service, keepalive, self._listens)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Idle sessions expire while the gateway runs; on the way out, listen streams end gracefully and sessions
        end (their requests are cancelled)."""
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            stack.callback(self._bus.subscribe(self._legacy.on_event))
            tg.start_soon(self.sessions.expire_idle)
            try:
                yield
            finally:
                self._listens.close()
                self.sessions.end_all()
                tg.cancel_scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = authentication(scope)
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
            await framing.refuse_with(send, exc)
            return
        base = self._metadata.base(scope.get("scheme", "http"), headers.get("host", "localhost"))
        caller = Caller(auth, overrides, base)
        version = headers.get(_VERSION_HEADER.decode())
        modern = version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS
        if scope.get("method") != "POST":
            if modern:
                await self._modern.refuse_method(send)
            elif scope.get("method") == "GET":
                await self._legacy.get(caller, headers, receive, send)
            else:
                await self._legacy.delete(caller, headers, send)
            return
        if not is_json_media_type(headers.get("content-type")):
            await framing.refuse(send, 415, "Unsupported Media Type: Content-Type must be application/json")
            return
        body = await read_body(scope, receive, self._max_body)
        if not isinstance(body, bytes):
            await body(scope, receive, send)
            return
        message, problem = parse_envelope(body)
        if problem is not None:
            await framing.refuse(send, 400, f"Invalid Request: {problem}")
            return
        trace_id = request_id_in(scope)
        if modern:
            await self._modern.post(caller, trace_id, message, scope["headers"], receive, send)
        else:
            await self._legacy.post(caller, trace_id, message, headers, receive, send)

    def _check_access(self, principal: Principal) -> None:
        """A single server or virtual server the caller may not use at all is 403; `/mcp` only filters."""
        if self._endpoint.kind is EndpointKind.AGGREGATE:
            return
        if not any(decide(principal, self._registry.gates[g]).allowed for g in self._gates):
            raise Forbidden(f"Forbidden: you are not authorized for {self._endpoint.title}")

"""The composition root of the ASGI application: one MCP endpoint per remote and virtual server and `/mcp` for
everything (`gateway/wire/`, over `gateway/service/`), the other routes (`gateway/routes/`), and the layers every
request passes first (`gateway/middleware/`, `inbound.middleware`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from virtual_mcp.audit import AuditLog
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import BadRequest, ConfigError, ConfigIssue
from virtual_mcp.fleet.calls import ReplicaCalls
from virtual_mcp.fleet.events import FleetEvents
from virtual_mcp.fleet.sessions import SessionFleet
from virtual_mcp.fleet.tasks import TaskFleet
from virtual_mcp.fleet.upstream import UpstreamFleet
from virtual_mcp.gateway.middleware.endpoints import McpEndpoints
from virtual_mcp.gateway.middleware.front_guard import FrontGuard
from virtual_mcp.gateway.middleware.request_scope import RequestScope
from virtual_mcp.gateway.routes import needs_caller
from virtual_mcp.gateway.routes.admin import admin_routes
from virtual_mcp.gateway.routes.connections import connections_routes
from virtual_mcp.gateway.routes.consent import consent_routes
from virtual_mcp.gateway.routes.health import Health, health_routes
from virtual_mcp.gateway.routes.metadata import metadata_routes
from virtual_mcp.gateway.routes.metrics import metrics_route
from virtual_mcp.gateway.routes.unconfigured import unconfigured_route
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.service.request_state import RequestStates
from virtual_mcp.gateway.wire.endpoint import EndpointApp
from virtual_mcp.gateway.wire.session_quota import SessionQuota
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.metrics_access import MetricsAccess
from virtual_mcp.inbound.middleware import Authenticate
from virtual_mcp.inbound.origin import OriginPolicy, is_loopback_host
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Security:
    """The inbound and outbound planes for one gateway: who may call, and how the gateway calls backends."""

    authenticator: Authenticator
    credentials: OutboundCredentials
    metadata: ResourceMetadata = field(default_factory=ResourceMetadata)
    # Where audit events go; None: not recorded (local mode without a data directory).
    audit: AuditLog | None = None
    # Identities revoked by `virtual-mcp revoke` (the same list the authenticator checks JWTs against).
    revocations: RevocationList | None = None
    # For /readyz: each check's problem (None: fine), e.g. {"database": None, "vault": "master key ..."}.
    health: Health | None = None
    # The value of the gateway document's `metrics.bearer_token`; None: /metrics is for loopback clients only.
    metrics_token: str | None = field(default=None, repr=False)
    # What the replicas tell each other (revocations, backends' list changes); None: this process alone.
    events: FleetEvents | None = None
    # The 2025-11-25 client sessions of the replicas; None: this process's own.
    sessions: SessionFleet | None = None
    # How 2026-07-28 callers' requestStates are sealed (a key from the master key); None: a key of this process.
    request_states: RequestStates | None = None
    # The other replicas, for a retry of a call another one holds; None: this process alone.
    replicas: ReplicaCalls | None = None
    # The backend sessions the replicas hold as one; None: each replica's own.
    upstream: UpstreamFleet | None = None
    # 2025-11-25 task routes any replica finds; None: each replica's own.
    tasks: TaskFleet | None = None

    @classmethod
    def local(
        cls, registry: Registry, settings: GatewaySettings, secrets: Mapping[SecretRef, str] | None = None
    ) -> Security:
        """Loopback local mode with secrets given in memory (tests, the demo)."""
        local = LocalIdentity(registry, settings.local_user) if settings.local_user else None
        known = dict(secrets or {})

        def resolve(ref: SecretRef) -> str:
            if ref not in known:
                raise ConfigError([ConfigIssue("", "", "", f"unresolvable secret reference {ref.uri}")])
            return known[ref]

        token = registry.metrics.bearer_token
        return cls(
            Authenticator(registry, local=local),
            OutboundCredentials(registry, resolve),
            metrics_token=resolve(SecretRef.parse(token)) if token else None,
        )


def create_app(
    registry: Registry, settings: GatewaySettings, security: Security | None = None, metrics: Metrics | None = None
) -> Starlette:
    """Build the gateway for one configuration snapshot. Background work starts only in the app's lifespan."""
    if settings.local_user is not None and not is_loopback_host(settings.host):
        raise BadRequest("--local-user is only allowed on a loopback listener (127.0.0.1, ::1, localhost)")
    security = security or Security.local(registry, settings)
    metrics = metrics or Metrics()
    runtime = Runtime(
        registry,
        settings,
        security.credentials,
        security.audit,
        security.revocations,
        metrics,
        security.events,
        security.sessions,
        security.request_states,
        security.replicas,
        security.upstream,
        security.tasks,
    )
    quota = SessionQuota(settings.limits, security.sessions)
    parts = runtime.service_parts()
    endpoints = {
        path: EndpointApp(
            endpoint,
            McpService(endpoint, runtime.views[path], parts),
            runtime.sessions[path],
            registry,
            settings,
            security.metadata,
            runtime.auditor,
            quota,
            runtime.keepalive,
            runtime.buses[path],
        )
        for path, endpoint in registry.endpoints.items()
    }
    routes = [
        # Reached through McpEndpoints; in the table for the methods they do not serve (405).
        *(Route(path, endpoint=app, methods=["GET", "POST", "DELETE"]) for path, app in endpoints.items()),
        *health_routes(lambda: runtime.ready, len(registry.endpoints), security.health),
        metrics_route(metrics, MetricsAccess(security.metrics_token)),
        *metadata_routes(security.metadata),
        *admin_routes(registry, runtime.catalog),
        unconfigured_route(runtime.auditor, settings.max_request_body_bytes),
        *consent_routes(registry, security.credentials, security.authenticator, security.metadata, runtime.auditor),
        *connections_routes(registry, security.credentials),
    ]
    middleware = [  # outermost first
        Middleware(RequestScope, metrics=metrics, endpoints=frozenset(registry.endpoints)),
        Middleware(FrontGuard, origins=_origins(settings, security.metadata)),
        Middleware(Authenticate, security.authenticator, security.metadata, needs_caller),
        Middleware(McpEndpoints, endpoints),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(runtime.running())
            for endpoint in endpoints.values():
                await stack.enter_async_context(endpoint.running())
            logger.info("virtual-mcp serving %d endpoints", len(registry.endpoints))
            yield {"runtime": runtime}

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.runtime = runtime
    return app


def _origins(settings: GatewaySettings, metadata: ResourceMetadata) -> OriginPolicy:
    """The Hosts and browser Origins the gateway answers to: the configured ones and its public URL's host."""
    public_host = urlsplit(metadata.public_url).hostname if metadata.public_url else None
    return OriginPolicy(
        settings.allowed_origins,
        (*settings.allowed_hosts, *([public_host] if public_host else [])),
        loopback_only=is_loopback_host(settings.host),
    )

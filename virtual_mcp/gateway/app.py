"""The ASGI application: one MCP endpoint per remote and virtual server, `/mcp` for everything, health checks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from virtual_mcp.audit import AuditLog
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import (
    BadRequest,
    ConfigError,
    ConfigIssue,
    Forbidden,
    GatewayError,
    TooManyRequests,
    Unauthorized,
)
from virtual_mcp.gateway.admin import group_view
from virtual_mcp.gateway.front import FrontGuard, unauthorized
from virtual_mcp.gateway.http import gateway_error_response, requested_method
from virtual_mcp.gateway.oauth_routes import oauth_routes
from virtual_mcp.gateway.request_scope import RequestScope, request_id_in
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.wire.endpoint import EndpointApp
from virtual_mcp.gateway.wire.session_quota import SessionQuota
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.metadata import WELL_KNOWN, ResourceMetadata
from virtual_mcp.inbound.metrics_access import CHALLENGE as METRICS_CHALLENGE
from virtual_mcp.inbound.metrics_access import MetricsAccess
from virtual_mcp.inbound.origin import OriginPolicy, is_loopback_host
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.registry import AGGREGATE_PATH, ENDPOINT_PATH, Registry
from virtual_mcp.timing import phase
from virtual_mcp.types import Authentication

logger = logging.getLogger(__name__)
_LONGEST_NAME = 81  # group/server, each at most 40 characters (config.models.Name)


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
    health: Callable[[], Awaitable[dict[str, str | None]]] | None = None
    # The value of the gateway document's `metrics.bearer_token`; None: /metrics is for loopback clients only.
    metrics_token: str | None = field(default=None, repr=False)

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
    runtime = Runtime(registry, settings, security.credentials, security.audit, security.revocations, metrics)
    public = security.metadata.public_url
    public_host = urlsplit(public).hostname if public else None
    origins = OriginPolicy(
        settings.allowed_origins,
        (*settings.allowed_hosts, *([public_host] if public_host else [])),
        loopback_only=is_loopback_host(settings.host),
    )
    routes: list[Route] = []
    metrics_access = MetricsAccess(security.metrics_token)
    endpoint_apps: dict[str, EndpointApp] = {}
    quota = SessionQuota(settings.limits)
    parts = runtime.service_parts()
    for path, endpoint in registry.endpoints.items():
        front = EndpointApp(
            endpoint,
            McpService(endpoint, runtime.views[path], parts),
            runtime.sessions[path],
            registry,
            settings,
            security.authenticator,
            security.metadata,
            runtime.auditor,
            quota,
            runtime.keepalive,
            runtime.buses[path],
        )
        routes.append(Route(path, endpoint=front, methods=["GET", "POST", "DELETE"]))
        endpoint_apps[path] = front

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        """Ready once started and while the configuration, the database and the vault are usable."""
        if not runtime.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        checks = {"config": f"{len(registry.endpoints)} endpoint(s)"}
        if security.health is not None:
            problems = await security.health()
            checks.update({name: problem or "ok" for name, problem in problems.items()})
            if any(problems.values()):
                return JSONResponse({"status": "not ready", "checks": checks}, status_code=503)
        return JSONResponse({"status": "ready", "checks": checks})

    async def metrics_page(request: Request) -> Response:
        client = request.client
        refusal = metrics_access.refusal(client.host if client else None, request.headers.get("authorization"))
        if refusal is not None:
            challenge = {"WWW-Authenticate": METRICS_CHALLENGE} if isinstance(refusal, Unauthorized) else None
            return gateway_error_response(refusal, challenge)
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def resource_metadata(request: Request) -> Response:
        path = "/" + request.path_params.get("path", "")
        # Every endpoint-shaped path has a document, configured or not: metadata is public and must not be a
        # directory of which servers exist.
        if path != "/" and path != AGGREGATE_PATH and ENDPOINT_PATH.fullmatch(path) is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        base = security.metadata.base(request.url.scheme, request.headers.get("host", "localhost"))
        return JSONResponse(security.metadata.document(base, "" if path == "/" else path))

    async def authenticated(request: Request) -> Authentication | Response:
        client = request.client
        try:
            with phase("auth"):
                return await security.authenticator.authenticate(
                    request.headers, request.url.query, client.host if client else None
                )
        except Unauthorized as exc:
            return unauthorized(exc, security.metadata, request.scope["path"], request.scope, request.headers)
        except TooManyRequests as exc:
            return gateway_error_response(exc)

    async def admin_group(request: Request) -> Response:
        auth = await authenticated(request)
        if isinstance(auth, Response):
            return auth
        try:
            return JSONResponse(group_view(registry, runtime.catalog, request.path_params["group"], auth.principal))
        except GatewayError as exc:
            return gateway_error_response(exc)

    async def no_such_endpoint(request: Request) -> Response:
        """An unconfigured server path is answered like a configured one the caller may not use: 401, then 403."""
        auth = await authenticated(request)
        if isinstance(auth, Response):
            return auth
        with phase("policy"):  # the same phases, and so the same Server-Timing entries, as a configured server's 403
            name = "/".join(request.scope["path"].split("/")[2:4])
            # Configured names are at most 81 characters: a longer one is cut, which tells nothing about what exists.
            name = name if len(name) <= _LONGEST_NAME else name[:_LONGEST_NAME] + "..."
            refusal = Forbidden(f"Forbidden: you are not authorized for {name}")
        method = await requested_method(request.scope, request.receive, settings.max_request_body_bytes)
        await runtime.auditor.refused(
            request_id_in(request.scope), auth.principal, request.scope["path"], name, method, refusal.message
        )
        return gateway_error_response(refusal)

    routes += [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        Route(WELL_KNOWN, resource_metadata),
        Route(WELL_KNOWN + "/{path:path}", resource_metadata),
        Route("/admin/groups/{group}", admin_group),
        Route("/mcp-server/{rest:path}", no_such_endpoint, methods=["GET", "POST", "DELETE"]),
        *oauth_routes(registry, security.credentials, security.authenticator, security.metadata, runtime.auditor),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(runtime.running())
            for front in endpoint_apps.values():
                await stack.enter_async_context(front.running())
            logger.info("virtual-mcp serving %d endpoints", len(registry.endpoints))
            yield {"runtime": runtime}

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(FrontGuard, origins=origins, endpoints=endpoint_apps)
    app.add_middleware(
        RequestScope, metrics=metrics, endpoints=frozenset(registry.endpoints)
    )  # outermost: the endpoint routes' refusals for Host or Origin are timed too
    return app

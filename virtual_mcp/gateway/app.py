"""The ASGI application: one MCP endpoint per remote and virtual server, `/mcp` for everything, health checks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import ListenHandler
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import BadRequest
from virtual_mcp.gateway.endpoint import PRINCIPAL_STATE_KEY, SessionTracker, build_server
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.origin import OriginPolicy, is_loopback_host
from virtual_mcp.registry import Registry

logger = logging.getLogger(__name__)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | Response:
    """The whole request body, or a 413 answer as soon as it is known to exceed `limit`."""
    too_large = _error(413, BadRequest.jsonrpc_code, f"Request body too large (limit {limit} bytes)")
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _envelope_problem(body: bytes) -> str | None:
    """What makes valid JSON not a JSON-RPC message; malformed JSON is left to the transport (-32700)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(message, list):
        return "batches are not supported; send one JSON-RPC message per request"
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return 'body must be one JSON-RPC 2.0 object with "jsonrpc": "2.0"'
    if not isinstance(message.get("method"), str) and not (
        "id" in message and ("result" in message or "error" in message)
    ):
        return 'a JSON-RPC request needs a string "method"'
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the already-read body to the transport, then pass on what the server reports (e.g. a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class EndpointApp:
    """ASGI app of one endpoint: origin check, inbound identity, then the SDK's streamable-HTTP transport."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        origins: OriginPolicy,
        identity: LocalIdentity | None,
        max_body: int,
    ) -> None:
        self._manager = manager
        self._origins = origins
        self._identity = identity
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self._origins.allows(headers.get("origin"), headers.get("host")):
            await _error(403, BadRequest.jsonrpc_code, "Forbidden: foreign Origin")(scope, receive, send)
            return
        client = scope.get("client")
        principal = self._identity.authenticate(client[0] if client else None) if self._identity else None
        if principal is None:
            await _error(
                401,
                BadRequest.jsonrpc_code,
                "Unauthorized: this gateway accepts local requests only (serve --local-user)",
                {"WWW-Authenticate": 'Bearer realm="virtual-mcp"'},
            )(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        if scope.get("method") == "POST":
            body = await _read_body(scope, receive, self._max_body)
            if isinstance(body, Response):
                await body(scope, receive, send)
                return
            problem = _envelope_problem(body)
            if problem is not None:
                await _error(400, BadRequest.jsonrpc_code, f"Invalid Request: {problem}")(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self._manager.handle_request(scope, receive, send)


def create_app(registry: Registry, settings: GatewaySettings) -> Starlette:
    """Build the gateway for one configuration snapshot. Background work starts only in the app's lifespan."""
    if settings.local_user is not None and not is_loopback_host(settings.host):
        raise BadRequest("--local-user is only allowed on a loopback listener (127.0.0.1, ::1, localhost)")
    runtime = Runtime(registry, settings)
    origins = OriginPolicy(settings.allowed_origins)
    identity = LocalIdentity(registry, settings.local_user) if settings.local_user else None
    # Origin is checked by EndpointApp (which also allows same-origin and configured origins); the SDK's own
    # check would refuse a gateway reached by a non-loopback Host name.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    managers: list[StreamableHTTPSessionManager] = []
    listeners: list[ListenHandler] = []
    routes: list[Route] = []
    for path, endpoint in registry.endpoints.items():
        tracker = SessionTracker()
        runtime.client_sessions[path] = tracker.sessions
        listen = ListenHandler(runtime.buses[path])
        listeners.append(listen)
        server = build_server(endpoint, runtime, tracker, listen)
        manager = StreamableHTTPSessionManager(
            app=server,
            security_settings=security,
            max_request_body_size=settings.max_request_body_bytes,
        )
        managers.append(manager)
        routes.append(
            Route(
                path,
                endpoint=EndpointApp(manager, origins, identity, settings.max_request_body_bytes),
                methods=["GET", "POST", "DELETE"],
            )
        )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if not runtime.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "endpoints": len(registry.endpoints)})

    routes += [Route("/healthz", healthz), Route("/readyz", readyz)]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(runtime.running())
            for manager in managers:
                await stack.enter_async_context(manager.run())
            # Runs first on the way out: end listen streams gracefully before their managers stop.
            for listen in listeners:
                stack.callback(listen.close)
            logger.info("virtual-mcp serving %d endpoints", len(registry.endpoints))
            yield {"runtime": runtime}

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    return app

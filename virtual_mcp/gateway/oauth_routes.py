"""The gateway's own OAuth pages: consent start and callback (browser), connected accounts (API, bearer)."""

from __future__ import annotations

import html
import logging

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from virtual_mcp.errors import GatewayError, TooManyRequests, Unauthorized
from virtual_mcp.gateway.http import gateway_error_response
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.outbound.provider_metadata import ProviderMetadataError
from virtual_mcp.registry import Registry
from virtual_mcp.types import ServerRef

logger = logging.getLogger(__name__)


def _page(title: str, text: str, status: int = 200) -> HTMLResponse:
    body = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})


def oauth_routes(
    registry: Registry, credentials: OutboundCredentials, authenticator: Authenticator, metadata: ResourceMetadata
) -> list[Route]:
    def base(request: Request) -> str:
        return metadata.base(request.url.scheme, request.headers.get("host", "localhost"))

    async def start(request: Request) -> Response:
        try:
            target = await credentials.consent_redirect(
                request.query_params.get("ticket", ""), f"{base(request)}/oauth/callback"
            )
        except ProviderMetadataError as exc:
            logger.warning("consent start refused: %s", exc.message)
            return _page("Cannot connect", exc.message, exc.http_status)
        except GatewayError as exc:
            return _page("Link expired", exc.message, exc.http_status)
        return RedirectResponse(target, status_code=302, headers={"cache-control": "no-store"})

    async def callback(request: Request) -> Response:
        params = request.query_params
        if "error" in params:
            error = params["error"][:64]
            return _page("Not connected", f"The provider answered {error!r}; nothing was stored.", 400)
        try:
            server = await credentials.finish_consent(params.get("state", ""), params.get("code", ""))
        except GatewayError as exc:
            logger.info("consent callback refused: %s", exc.message)
            return _page("Not connected", exc.message, exc.http_status if exc.http_status >= 400 else 400)
        return _page("Connected", f"Your account for {server.key} is connected. Return to your client and retry.")

    async def authenticated_user(request: Request) -> str | Response:
        client = request.client
        try:
            auth = await authenticator.authenticate(request.headers, request.url.query, client.host if client else None)
        except (Unauthorized, TooManyRequests) as exc:
            return gateway_error_response(exc)
        return auth.principal.name

    async def connections(request: Request) -> Response:
        user = await authenticated_user(request)
        if isinstance(user, Response):
            return user
        return JSONResponse({"user": user, "connected": await credentials.connected(user)})

    async def disconnect(request: Request) -> Response:
        user = await authenticated_user(request)
        if isinstance(user, Response):
            return user
        ref = ServerRef(request.path_params["group"], request.path_params["server"])
        if ref not in registry.remotes:
            return JSONResponse({"error": "not_found"}, status_code=404)
        outcome = await credentials.disconnect(user, ref)
        return JSONResponse({"disconnected": ref.key, "provider": outcome})

    return [
        Route("/oauth/start", start),
        Route("/oauth/callback", callback),
        Route("/oauth/connections", connections),
        Route("/oauth/connections/{group}/{server}", disconnect, methods=["DELETE"]),
    ]

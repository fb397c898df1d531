"""A user's connected accounts (API, for the caller the middleware authenticated): list them, disconnect one."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from virtual_mcp.error_responses import gateway_error_response
from virtual_mcp.errors import Forbidden
from virtual_mcp.inbound.middleware import authentication
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.registry import Registry
from virtual_mcp.types import PrincipalKind, ServerRef

PREFIX = "/oauth/connections"


def connections_routes(registry: Registry, credentials: OutboundCredentials) -> list[Route]:
    def user_of(request: Request) -> str | Response:
        principal = authentication(request.scope).principal
        if principal.kind is not PrincipalKind.USER:
            # Connected accounts are keyed by user name: a virtual account that happens to share one must not see
            # or disconnect that user's accounts.
            return gateway_error_response(Forbidden("only users have connected accounts; this is a virtual account"))
        return principal.name

    async def connections(request: Request) -> Response:
        user = user_of(request)
        if isinstance(user, Response):
            return user
        return JSONResponse({"user": user, "connected": await credentials.connected(user)})

    async def disconnect(request: Request) -> Response:
        user = user_of(request)
        if isinstance(user, Response):
            return user
        ref = ServerRef(request.path_params["group"], request.path_params["server"])
        if ref not in registry.remotes:
            return JSONResponse({"error": "not_found"}, status_code=404)
        outcome = await credentials.disconnect(user, ref)
        return JSONResponse({"disconnected": ref.key, "provider": outcome})

    return [
        Route(PREFIX, connections, methods=["GET"]),
        Route(PREFIX + "/{group}/{server}", disconnect, methods=["DELETE"]),
    ]

"""A server path nothing is configured at is answered like a configured server the caller may not use: 401 for no
caller (the middleware), then 403, audited, with the same phases timed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from virtual_mcp.error_responses import gateway_error_response
from virtual_mcp.errors import Forbidden
from virtual_mcp.gateway.http import requested_method
from virtual_mcp.gateway.middleware.request_scope import request_id_in
from virtual_mcp.gateway.service.auditing import Auditor
from virtual_mcp.inbound.middleware import authentication
from virtual_mcp.timing import phase

_LONGEST_NAME = 81  # group/server, each at most 40 characters (config.models.Name)


def unconfigured_route(auditor: Auditor, max_body: int) -> Route:
    async def no_such_endpoint(request: Request) -> Response:
        principal = authentication(request.scope).principal
        with phase("policy"):  # the same phases, and so the same Server-Timing entries, as a configured server's 403
            name = "/".join(request.scope["path"].split("/")[2:4])
            # Configured names are at most 81 characters: a longer one is cut, which tells nothing about what exists.
            name = name if len(name) <= _LONGEST_NAME else name[:_LONGEST_NAME] + "..."
            refusal = Forbidden(f"Forbidden: you are not authorized for {name}")
        method = await requested_method(request.scope, request.receive, max_body)
        await auditor.refused(
            request_id_in(request.scope), principal, request.scope["path"], name, method, refusal.message
        )
        return gateway_error_response(refusal)

    return Route("/mcp-server/{rest:path}", no_such_endpoint, methods=["GET", "POST", "DELETE"])

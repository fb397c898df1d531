"""`/metrics`, the Prometheus exposition, for the readers `MetricsAccess` admits (its own bearer token, not a caller's
credential: its 401 challenges for that token, realm "metrics")."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from virtual_mcp.error_responses import gateway_error_response
from virtual_mcp.errors import Unauthorized
from virtual_mcp.inbound.metrics_access import CHALLENGE, MetricsAccess
from virtual_mcp.metrics import CONTENT_TYPE, Metrics


def metrics_route(metrics: Metrics, access: MetricsAccess) -> Route:
    async def metrics_page(request: Request) -> Response:
        client = request.client
        refusal = access.refusal(client.host if client else None, request.headers.get("authorization"))
        if refusal is not None:
            challenge = {"WWW-Authenticate": CHALLENGE} if isinstance(refusal, Unauthorized) else None
            return gateway_error_response(refusal, challenge)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return Route("/metrics", metrics_page)

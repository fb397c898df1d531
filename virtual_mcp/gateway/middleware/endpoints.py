"""The MCP endpoints reached by their path (one dict lookup: no routing table walk, no exception middlewares) for
the methods they serve; anything else goes on to the application's router."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

_ENDPOINT_METHODS = frozenset({"GET", "POST", "DELETE"})


class McpEndpoints:
    def __init__(self, app: ASGIApp, endpoints: Mapping[str, ASGIApp]) -> None:
        self._app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _ENDPOINT_METHODS:
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self._app(scope, receive, send)

"""The MCP service of one endpoint: every method written once, whichever wire and protocol era brought it.

`handle` takes a request context (the caller, the protocol version, the ids, where notifications go) with a method and
its params, and returns the result as the caller's version puts it on the wire, or raises a GatewayError (the wire
renders it). Policy, routing, credentials, audit and timing happen below this, and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_types import InitializeRequestParams
from mcp_types import methods as spec_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from virtual_mcp.errors import GatewayError, InvalidParams, MethodNotFound
from virtual_mcp.gateway.service.aggregate import Aggregate
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.endpoint_view import EndpointView
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.passthrough import passthrough
from virtual_mcp.gateway.service.results import capabilities, offers_more_than_tools, server_info, shape
from virtual_mcp.gateway.service.tasks import TASK_METHODS, cancels_tasks, relays_tasks
from virtual_mcp.gateway.service.tools import Tools
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import Endpoint, EndpointKind

logger = logging.getLogger(__name__)
Handler = Callable[[RequestContext, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def _invalid_params() -> InvalidParams:
    # The details of a validation failure echo what the caller sent: they are not repeated back.
    return InvalidParams("Invalid request parameters", data="")


class McpService:
    def __init__(self, endpoint: Endpoint, view: EndpointView, parts: ServiceParts) -> None:
        self.endpoint = endpoint
        self.stamp = server_info(endpoint)
        self._pool = parts.pool
        self._tools = Tools(endpoint, view, parts, self.stamp)
        self._handlers: dict[str, Handler] = {
            "ping": self._empty,
            "server/discover": self._discover,
            "logging/setLevel": self._set_level,
        }
        if endpoint.kind is EndpointKind.REMOTE:
            self._handlers.update(passthrough(endpoint, parts))
        elif endpoint.kind is EndpointKind.AGGREGATE or offers_more_than_tools(endpoint):
            self._handlers.update(Aggregate(endpoint, parts).handlers())
        # These shape their own results (tools/list keeps its shaped answer; tools/call shapes inside its audit).
        self._shaping: dict[str, Handler] = {"tools/list": self._tools.list, "tools/call": self._tools.call}

    def _capabilities(self) -> dict[str, Any]:
        if self.endpoint.kind is EndpointKind.AGGREGATE:
            # Subscriptions are offered once one of its servers is known to offer them.
            offered = [self._pool.learned(m.source) for m in self.endpoint.members]
            subscribes = any(
                learned is not None and (learned.capabilities.get("resources") or {}).get("subscribe") is True
                for learned in offered
            )
            return capabilities(self.endpoint, {"resources": {"subscribe": True}} if subscribes else None)
        source = self.endpoint.members[0].source if self.endpoint.kind is EndpointKind.REMOTE else None
        learned = self._pool.learned(source) if source is not None else None
        return capabilities(self.endpoint, learned.capabilities if learned is not None else None)

    async def handle(self, ctx: RequestContext, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if method in TASK_METHODS and not ctx.modern:
            if not self._relays_tasks() and any(self._pool.learned(m.source) is None for m in self.endpoint.members):
                await self._tools.meet(ctx.caller)  # a session another replica opened: its backends met here too
            if self._relays_tasks():
                if not isinstance(params, Mapping):
                    raise InvalidParams(f"{method} needs params with a taskId")
                return await self._tools.task(ctx, method, params)
        if method not in spec_methods.SPEC_CLIENT_METHODS:
            raise MethodNotFound(method)
        try:
            spec_methods.validate_client_request(method, ctx.version, params)
        except KeyError:
            raise MethodNotFound(method) from None  # not a method of the caller's protocol version
        except ValidationError:
            raise _invalid_params() from None
        shaping = self._shaping.get(method)
        if shaping is not None:
            return await shaping(ctx, params or {})
        handler = self._handlers.get(method)
        if handler is None:
            raise MethodNotFound(method)
        return shape(method, ctx.version, await handler(ctx, params or {}), self.stamp)

    async def initialize(self, caller: Caller, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
        """A 2025-11-25 `initialize`: its result and the negotiated version (the client's, if the gateway speaks it).

        What the endpoint offers depends on what its backends offer (completions, subscriptions, tasks): a backend
        the gateway has not met yet is met first, as a tool list would (within the list deadline; one that does not
        answer in time is offered as what the gateway knows of it)."""
        try:
            requested = InitializeRequestParams.model_validate(params or {}, by_name=False).protocol_version
        except ValidationError:
            raise _invalid_params() from None
        if any(self._pool.learned(m.source) is None for m in self.endpoint.members):
            await self._tools.meet(caller)
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        offered = self._capabilities()
        if self._relays_tasks():  # 2025-11-25 only: task-augmented tool calls, passed through (service/tasks.py)
            offered["tasks"] = {"requests": {"tools": {"call": {}}}}
            if any(cancels_tasks(self._pool.learned(m.source)) for m in self.endpoint.members):
                offered["tasks"]["cancel"] = {}
        result = {"protocolVersion": version, "capabilities": offered, "serverInfo": self.stamp}
        return shape("initialize", version, result, self.stamp), version

    def _relays_tasks(self) -> bool:
        """Whether one of the endpoint's backends takes task-augmented tool calls (as it said when last connected)."""
        return any(relays_tasks(self._pool.learned(m.source)) for m in self.endpoint.members)

    def declares_param_headers(self, caller: Caller, name: str) -> bool:
        """Whether a tool `caller` may use declares `Mcp-Param` headers (from the cache, no I/O)."""
        return self._tools.declares_param_headers(caller, name)

    def input_schema(self, caller: Caller, name: str) -> dict[str, Any] | None:
        """The input schema of a tool `caller` may use, from the cache (no I/O): for Mcp-Param header checks."""
        return self._tools.input_schema(caller, name)

    async def watch(self, ctx: RequestContext, uri: str) -> bool:
        """Subscribe `ctx.subscriber` to updates of `uri` (a 2026-07-28 listen stream's resource subscription);
        False if the endpoint or the backend does not offer them for this caller (the listen stream omits it)."""
        subscribe = self._handlers.get("resources/subscribe")
        if subscribe is None:
            return False
        try:
            await subscribe(ctx, {"uri": uri})
        except GatewayError as exc:
            logger.info("a listen stream's subscription was not honoured: %s", exc.message)
            return False
        return True

    async def unwatch(self, ctx: RequestContext, uri: str) -> None:
        unsubscribe = self._handlers.get("resources/unsubscribe")
        if unsubscribe is not None:
            try:
                await unsubscribe(ctx, {"uri": uri})
            except GatewayError as exc:
                logger.info("ending a listen stream's subscription: %s", exc.message)

    async def _empty(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def _discover(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"supportedVersions": list(MODERN_PROTOCOL_VERSIONS), "capabilities": self._capabilities()}

    async def _set_level(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        # Per client session: what the gateway relays of the backends' log messages (which send every level).
        if ctx.session is not None:
            await ctx.session.set_log_level(params["level"])
        return {}

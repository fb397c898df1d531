"""What both `tools/call` fast paths share with the SDK path's handler: the policy decision and the forwarded call
with its audit record, the credential obtained once and errors rendered as the SDK path renders them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from mcp_types import methods as spec_methods
from pydantic import ValidationError
from starlette.types import Scope

from virtual_mcp.errors import GatewayError
from virtual_mcp.gateway.request_scope import request_id_in
from virtual_mcp.gateway.views import Route
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import Endpoint
from virtual_mcp.timing import phase
from virtual_mcp.upstream.session import NotificationHandler

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtual_mcp.gateway.runtime import Runtime

logger = logging.getLogger(__name__)


def sieve(method: str, version: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A result as the SDK puts it on the wire: validated against `version`'s surface for `method` and cut down to
    it; an invalid one is the SDK's internal error (the details stay in the log: they echo the result)."""
    try:
        return spec_methods.serialize_server_result(method, version, result)
    except ValidationError:
        logger.exception("the result for %r is invalid", method)
        raise MCPError(code=INTERNAL_ERROR, message="Handler returned an invalid result") from None


class PlainCalls:
    """`tools/call` on one endpoint for a request that needs nothing but the call (no Mcp-Param headers)."""

    def __init__(self, endpoint: Endpoint, runtime: Runtime, render: Callable[[Exception], MCPError]) -> None:
        self.endpoint = endpoint
        self.runtime = runtime
        self.render = render  # a gateway error as the JSON-RPC error the SDK path would send

    async def route(self, caller: Caller, name: str) -> Route | None:
        """Where the call goes; None when the SDK path must take it (a refusal, which it audits and answers, or a
        tool whose schema declares Mcp-Param headers). Nothing has happened that cannot be done twice."""
        runtime = self.runtime
        with phase("policy"):
            route = await runtime.view(self.endpoint.path).resolve(caller, name, runtime.settings.list_deadline_seconds)
        if route is None or runtime.catalog.param_header_map(route.member.source, route.original, route.scope):
            return None
        return route

    async def call(
        self,
        scope: Scope,
        caller: Caller,
        name: str,
        route: Route,
        arguments: dict[str, Any],
        meta: Mapping[str, Any] | None,
        on_notification: NotificationHandler | None = None,
    ) -> dict[str, Any]:
        """The backend's raw result, audited; a gateway error is raised as the MCPError the caller gets."""
        runtime = self.runtime
        source = route.member.source
        try:
            async with runtime.auditor.tool_call(
                request_id_in(scope), caller, self.endpoint.path, name, arguments
            ) as note:
                note.server, note.tool = source, route.original
                credential = await runtime.credentials.credential_for(source, caller)
                note.sent = credential.headers
                with phase("upstream"):
                    result = await runtime.pool.session(source, credential, caller.principal).request(
                        "tools/call",
                        {"name": route.original, "arguments": arguments},
                        timeout=runtime.settings.call_timeout_seconds,
                        on_notification=on_notification,
                        meta=meta or None,
                    )
                note.result = result
        except GatewayError as exc:
            raise self.render(exc) from None
        return result

"""`tools/list` and `tools/call` of one endpoint: the one place a tool call is routed, authorised, given its
credential, forwarded and audited."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from mcp.shared.inbound import mcp_param_headers

from virtual_mcp.errors import GatewayError, InvalidParams, ToolNotFound
from virtual_mcp.gateway.service.consent import credential_or_consent
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.endpoint_view import EndpointView
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.request_state import Issued
from virtual_mcp.gateway.service.results import shape
from virtual_mcp.outbound.consent import ConsentRequired
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import Endpoint, EndpointKind
from virtual_mcp.timing import phase

_SHAPED_LISTS = 256  # shaped tools/list results kept per endpoint (per version and set of subjects)


class Tools:
    def __init__(self, endpoint: Endpoint, view: EndpointView, parts: ServiceParts, stamp: Mapping[str, Any]) -> None:
        self._endpoint = endpoint
        self._view = view
        self._parts = parts
        self._stamp = stamp
        # A list of 1,000 tools costs milliseconds to validate against the protocol surface: the shaped answer for
        # one version, one set of subjects and one state of the backends' lists is computed once.
        self._shaped: dict[tuple[str, Hashable], dict[str, Any]] = {}

    async def list(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        """Already shaped for the caller's version (the caller must not modify it: it is shared)."""
        if params.get("cursor") is not None:
            raise InvalidParams("invalid cursor: this server returns every tool in one page")
        parts = self._parts
        if self._endpoint.kind is EndpointKind.REMOTE:
            # One per-user OAuth server: a user who has not connected is told how to, rather than shown nothing.
            try:
                await parts.credentials.credential_for(self._endpoint.members[0].source, ctx.caller)
            except ConsentRequired:
                raise
            except GatewayError:
                pass  # other credential problems leave the list empty; calls say why
        with phase("upstream"):  # the backends' tool lists, from the catalog cache when it is fresh
            key, tools = await self._view.listing(ctx.caller, parts.settings.list_deadline_seconds)
        cache_key = (ctx.version, key)
        shaped = self._shaped.get(cache_key)
        if shaped is None:
            shaped = shape("tools/list", ctx.version, {"tools": tools}, self._stamp)
            if len(self._shaped) >= _SHAPED_LISTS:
                self._shaped.pop(next(iter(self._shaped)))
            self._shaped[cache_key] = shaped
        return shaped

    async def call(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        parts = self._parts
        settings = parts.settings
        view = self._view
        caller = ctx.caller
        name: str = params["name"]
        arguments = params.get("arguments") or {}
        async with parts.auditor.tool_call(ctx.trace_id, caller, self._endpoint.path, name, arguments) as note:
            with phase("policy"):
                route = await view.resolve(caller, name, settings.list_deadline_seconds)
            if route is None:
                refused, note.denial = view.refusal(caller.principal, name)
                if refused is not None:
                    note.server, note.tool = refused.member.source, refused.original
                raise ToolNotFound(name)
            source = route.member.source
            note.server, note.tool = source, route.original
            header_map = parts.catalog.param_header_map(source, route.original, route.scope)
            headers = mcp_param_headers(header_map, arguments) if header_map else None
            issued = Issued.of(caller.principal.subject, self._endpoint.path, "tools/call", name, arguments)
            credential, params = await credential_or_consent(parts, ctx, source, issued, params)
            if isinstance(credential, dict):  # a 2026-07-28 caller asked to connect their account first
                note.result = credential
                return shape("tools/call", ctx.version, credential, self._stamp)
            note.sent = credential.headers  # what this call presented upstream, scrubbed from what is recorded
            upstream_params: dict[str, Any] = {"name": route.original, "arguments": arguments}
            if "_meta" in params:
                upstream_params["_meta"] = params["_meta"]
            result = await parts.rounds.call(
                ctx,
                issued,
                params,
                parts.pool.session(source, credential, caller.principal, ctx.declared),
                "tools/call",
                upstream_params,
                timeout=settings.call_timeout_seconds,
                headers=headers,
            )
            note.result = result
            return shape("tools/call", ctx.version, result, self._stamp)

    def declares_param_headers(self, caller: Caller, name: str) -> bool:
        return self._view.declares_param_headers(name, caller)

    def input_schema(self, caller: Caller, name: str) -> dict[str, Any] | None:
        """The input schema of a tool the caller may use, from the cache (no I/O), for Mcp-Param header checks."""
        return self._view.input_schema(name, caller)

"""`tools/list` and `tools/call` of one endpoint: the one place a tool call is routed, authorised, given its
credential, forwarded and audited."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping
from typing import Any

import anyio
from mcp.shared.inbound import mcp_param_headers

from virtual_mcp.errors import GatewayError, InvalidParams, ToolNotFound
from virtual_mcp.gateway.service.consent import credential_or_consent
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.endpoint_view import EndpointView, Route
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.relay import forward
from virtual_mcp.gateway.service.request_state import Issued
from virtual_mcp.gateway.service.results import for_version, shape
from virtual_mcp.gateway.service.tasks import (
    TaskAsker,
    TaskRoute,
    TaskSink,
    created,
    relays_tasks,
    shown,
    task_support,
    without_execution,
)
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
        self._next_meet = 0.0  # when a handshake may next meet the backends (`meet`)

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
            if ctx.modern:  # 2026-07-28 moved tasks into an extension the gateway does not relay (service/tasks.py)
                tools = [without_execution(tool) for tool in tools]
            shaped = shape("tools/list", ctx.version, {"tools": tools}, self._stamp)
            if len(self._shaped) >= _SHAPED_LISTS:
                self._shaped.pop(next(iter(self._shaped)))
            self._shaped[cache_key] = shaped
        return shaped

    async def meet(self, caller: Caller) -> None:
        """Reach the backends `caller` may use through this endpoint, as a tool list does, so the gateway knows what
        they offer: within the list deadline, and at most once per `backend_retry_seconds` for the endpoint (a
        backend that cannot be met costs a handshake one deadline, not every handshake one). Whatever fails here is
        the list's or the call's to say."""
        settings = self._parts.settings
        now = anyio.current_time()
        if now < self._next_meet:
            return
        self._next_meet = now + settings.backend_retry_seconds
        with contextlib.suppress(GatewayError), anyio.move_on_after(settings.list_deadline_seconds):
            await self._view.listing(caller, settings.list_deadline_seconds)

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
            session = parts.pool.session(source, credential, caller.principal, ctx.declared)
            as_task = "task" in params and self._relays_task(ctx, route)
            if as_task:
                upstream_params["task"] = params["task"]
            result = await parts.rounds.call(
                ctx,
                issued,
                params,
                session,
                "tools/call",
                upstream_params,
                timeout=settings.call_timeout_seconds,
                headers=headers,
            )
            upstream_id = created(source, result) if as_task else None
            if upstream_id is not None:
                expires = parts.tasks.lifetime(result)
                session.pin(expires)  # the backend session holding it stays open while the task lives
                task = TaskRoute(
                    caller.principal.subject, self._endpoint.path, name, source, session, upstream_id, expires
                )
                task_id = parts.tasks.add(task)
                held_by = session.fleet_session_id
                if held_by is not None:
                    await parts.tasks.share(task_id, task, held_by)
                result = shown(result, "tools/call", source, upstream_id, task_id)
                note.result = result
                return for_version(result, ctx.version)
            note.result = result
            return shape("tools/call", ctx.version, result, self._stamp)

    def _relays_task(self, ctx: RequestContext, route: Route) -> bool:
        """Whether this call's `task` goes to the backend (service/tasks.py): a 2025-11-25 caller, a backend that
        takes task-augmented calls, and a tool it lists as taking them."""
        if ctx.modern or not relays_tasks(self._parts.pool.learned(route.member.source)):
            return False
        tool = self._parts.catalog.cached_tool(route.member.source, route.original, route.scope)
        return task_support(tool) != "forbidden"

    async def task(self, ctx: RequestContext, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """`tasks/get`, `tasks/result` or `tasks/cancel` of a task this caller created on this endpoint, sent to the
        backend session that holds it, while the caller may still use its tool; audited with that tool."""
        parts = self._parts
        caller = ctx.caller
        task_id = params.get("taskId")
        if not isinstance(task_id, str):
            raise InvalidParams("taskId must be a string")
        route = await parts.tasks.locate(task_id, caller.principal.subject, self._endpoint.path)
        async with parts.auditor.tool_call(
            ctx.trace_id, caller, self._endpoint.path, route.tool, {}, method=method
        ) as note:
            with phase("policy"):
                current = await self._view.resolve(caller, route.tool, parts.settings.list_deadline_seconds)
            note.server, note.tool = route.server, route.tool
            if current is None or current.member.source != route.server:
                note.denial = "the caller may no longer use the task's tool"
                raise ToolNotFound(route.tool)
            note.tool = current.original
            credential = await parts.credentials.credential_for(route.server, caller)
            note.sent = credential.headers
            session = route.session
            if session is None:  # a task another replica created: on the backend session the fleet holds as one
                session = parts.pool.session(route.server, credential, caller.principal, ctx.declared)
                if route.held_by is None or not await session.holds_fleet_session(route.held_by):
                    raise InvalidParams("no such task (unknown, expired, or not yours)")
                session.pin(route.expires)  # kept open here too while the task lives
            session.use_headers(credential.headers, credential.secrets)  # a token renewed since
            upstream: dict[str, Any] = {"taskId": route.upstream_id}
            if "_meta" in params:
                upstream["_meta"] = params["_meta"]
            result = await forward(
                ctx,
                session,
                method,
                upstream,
                timeout=parts.settings.call_timeout_seconds,
                asker=TaskAsker(ctx.asker, route.upstream_id, task_id) if ctx.asker is not None else None,
                sink=TaskSink(ctx.sink, route.upstream_id, task_id),
            )
            result = shown(result, method, route.server, route.upstream_id, task_id)
            note.result = result
            if method == "tasks/result":  # the result of the task's tools/call
                return shape("tools/call", ctx.version, result, self._stamp)
            return for_version(result, ctx.version)  # the backend's word only: no key the gateway alone sets

    def declares_param_headers(self, caller: Caller, name: str) -> bool:
        return self._view.declares_param_headers(name, caller)

    def input_schema(self, caller: Caller, name: str) -> dict[str, Any] | None:
        """The input schema of a tool the caller may use, from the cache (no I/O), for Mcp-Param header checks."""
        return self._view.input_schema(name, caller)

"""One MCP server per endpoint, built on the SDK's low-level server (half the per-request cost of fastmcp's).

Handlers return the backend's raw result dicts; the SDK shapes them for the caller's protocol era. The same
`EndpointView` (and so the same policy decision) serves tools/list and tools/call.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, get_args

import anyio
import mcp_types as types
from mcp.server.caching import CacheableMethod, CacheHint
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError, UrlElicitationRequiredError
from mcp.shared.inbound import mcp_param_headers
from pydantic import ValidationError

from virtual_mcp.errors import INTERNAL_ERROR, GatewayError, InvalidParams, ToolNotFound, UpstreamRpcError
from virtual_mcp.gateway.forward import for_version, forward
from virtual_mcp.gateway.front import CALLER_STATE_KEY, CURRENT_CALLER
from virtual_mcp.gateway.plain_call import PlainCalls
from virtual_mcp.gateway.request_scope import bind_request, request_id_of
from virtual_mcp.outbound.consent import ConsentRequired
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, EndpointKind
from virtual_mcp.timing import phase

if TYPE_CHECKING:
    from virtual_mcp.gateway.runtime import Runtime

logger = logging.getLogger(__name__)
Ctx = ServerRequestContext[Any, Any]


class _GatewayServer(Server[Any]):
    """Advertises tools.listChanged on handshake-era sessions: the gateway tells clients when backends change."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True), experimental_capabilities, extensions
        )


_PRIVATE_NO_CACHE: dict[CacheableMethod, CacheHint] = {
    m: CacheHint(ttl_ms=0, scope="private") for m in get_args(CacheableMethod)
}


def caller_of(ctx: Ctx) -> Caller:
    request = ctx.request
    caller = request.scope.get("state", {}).get(CALLER_STATE_KEY) if request is not None else None
    if not isinstance(caller, Caller):
        # The front door authenticates every request before it reaches the MCP server; this is a wiring bug.
        raise RuntimeError("request reached an MCP handler without an authenticated caller")
    return caller


def for_caller(ctx: Ctx, result: dict[str, Any]) -> dict[str, Any]:
    """`for_version` for the caller of `ctx`."""
    return for_version(result, ctx.protocol_version)


class ErrorRendering:
    """Server middleware: a GatewayError becomes the JSON-RPC error it describes; a backend's own error is passed on
    as the backend said it (the credentials its request presented were removed where its answer was read: see
    `virtual_mcp/upstream/answers.py`)."""

    def render(self, exc: Exception) -> MCPError:
        """A gateway error as the JSON-RPC error the caller gets (anything else is a generic internal error)."""
        if isinstance(exc, UpstreamRpcError):
            return MCPError(exc.code, exc.message, exc.data)
        if isinstance(exc, ConsentRequired):
            # The MCP way to send a user somewhere: a URL elicitation the client can open for them.
            elicitation = types.ElicitRequestURLParams(
                message=exc.message, url=exc.url, elicitation_id=exc.elicitation_id
            )
            return UrlElicitationRequiredError([elicitation], message=exc.message)
        if isinstance(exc, GatewayError):
            return MCPError(exc.jsonrpc_code, exc.message, exc.data)
        return MCPError(INTERNAL_ERROR, "Internal error")

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        try:
            return await call_next(ctx)
        except GatewayError as exc:
            raise self.render(exc) from None
        except (MCPError, ValidationError, anyio.get_cancelled_exc_class()):
            raise  # the SDK renders these itself (protocol errors, invalid params, cancellation)
        except Exception:
            # The top of a request: nothing unexpected may reach the caller as anything but a generic error.
            logger.exception("internal error serving %s", ctx.method)
            raise MCPError(INTERNAL_ERROR, "Internal error") from None


class SessionTracker:
    """Server middleware: remembers live handshake-era sessions so list_changed can reach them."""

    def __init__(self) -> None:
        self.sessions: dict[str, ServerSession] = {}
        self.log_levels: dict[str, str] = {}  # a 2025-11-25 session's logging/setLevel choice

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        # The SDK offers no public handle on a session's standalone channel outside a request; the session
        # object of any request on that connection carries it.
        connection = getattr(ctx.session, "_connection", None)
        session_id = getattr(connection, "session_id", None)
        if connection is not None and session_id and session_id not in self.sessions:
            self.sessions[session_id] = ctx.session
            connection.exit_stack.callback(self.sessions.pop, session_id, None)
            connection.exit_stack.callback(self.log_levels.pop, session_id, None)
        return await call_next(ctx)

    def set_log_level(self, ctx: Ctx, level: str) -> None:
        session_id = _session_id(ctx)
        if session_id:
            self.log_levels[session_id] = level

    def log_level(self, ctx: Ctx) -> str | None:
        session_id = _session_id(ctx)
        return self.log_levels.get(session_id) if session_id else None


def _session_id(ctx: Ctx) -> str | None:
    return ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None


def build_server(
    endpoint: Endpoint, runtime: Runtime, tracker: SessionTracker, listen: ListenHandler
) -> tuple[Server[Any], PlainCalls]:
    """The endpoint's MCP server, and what its fast paths for plain `tools/call` requests share with it."""
    settings = runtime.settings

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> HandlerResult:
        if params is not None and params.cursor:
            raise InvalidParams("invalid cursor: this server returns every tool in one page")
        if endpoint.kind is EndpointKind.REMOTE:
            # One per-user OAuth server: a user who has not connected is told how to, rather than shown nothing.
            try:
                await runtime.credentials.credential_for(endpoint.members[0].source, caller_of(ctx))
            except ConsentRequired:
                raise
            except GatewayError:
                pass  # other credential problems leave the list empty; calls say why
        with phase("upstream"):  # the backends' tool lists, from the catalog cache when it is fresh
            tools = await runtime.view(endpoint.path).list_tools(caller_of(ctx), settings.list_deadline_seconds)
        return for_caller(ctx, {"tools": tools})

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> HandlerResult:
        view = runtime.view(endpoint.path)
        caller = caller_of(ctx)
        arguments = params.arguments or {}
        async with runtime.auditor.tool_call(request_id_of(ctx), caller, endpoint.path, params.name, arguments) as note:
            with phase("policy"):
                route = await view.resolve(caller, params.name, settings.list_deadline_seconds)
            if route is None:
                refused, note.denial = view.refusal(caller.principal, params.name)
                if refused is not None:
                    note.server, note.tool = refused.member.source, refused.original
                raise ToolNotFound(params.name)
            source = route.member.source
            note.server, note.tool = source, route.original
            header_map = runtime.catalog.param_header_map(source, route.original, route.scope)
            headers = mcp_param_headers(header_map, arguments) if header_map else None
            upstream_params: dict[str, Any] = {"name": route.original, "arguments": arguments}
            credential = await runtime.credentials.credential_for(source, caller)
            note.sent = credential.headers  # what this call presented upstream, scrubbed from what is recorded
            result = await forward(
                ctx,
                runtime.pool.session(source, credential, caller.principal),
                "tools/call",
                upstream_params,
                timeout=settings.call_timeout_seconds,
                headers=headers,
                min_log_level=tracker.log_level(ctx),
            )
            note.result = result
        return for_caller(ctx, result)

    async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> HandlerResult:
        # Per client session: the upstream session is shared, so the level filters what the gateway relays.
        tracker.set_log_level(ctx, params.level)
        return {}

    # 2026-07-28 clients learn about tool list changes on a `subscriptions/listen` stream.
    handlers: dict[str, Any] = {
        "on_list_tools": list_tools,
        "on_call_tool": call_tool,
        "on_subscriptions_listen": listen,
        "on_set_logging_level": set_logging_level,
    }
    if endpoint.kind is EndpointKind.REMOTE:
        handlers.update(_passthrough_handlers(endpoint, runtime, tracker))

    view_of = runtime.view
    with warnings.catch_warnings():
        # logging/setLevel is deprecated in 2026-07-28 but is how 2025-11-25 clients choose what they receive.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server = _build(endpoint, view_of, handlers)
    rendering = ErrorRendering()
    server.middleware = [*server.middleware, bind_request, rendering, tracker]
    return server, PlainCalls(endpoint, runtime, rendering.render)


def _build(endpoint: Endpoint, view_of: Callable[[str], Any], handlers: dict[str, Any]) -> Server[Any]:
    return _GatewayServer(
        "virtual-mcp",
        version="0.1.0",
        title=endpoint.title,
        description=endpoint.description,
        get_tool_input_schema=lambda name: view_of(endpoint.path).input_schema(name, CURRENT_CALLER.get()),
        # What a caller sees depends on who they are: results may never be shared across callers.
        cache_hints=_PRIVATE_NO_CACHE,
        **handlers,
    )


def _passthrough_handlers(
    endpoint: Endpoint, runtime: Runtime, tracker: SessionTracker
) -> dict[str, Callable[[Ctx, Any], Awaitable[Any]]]:
    """Resources and prompts of a single remote server, forwarded as they are.

    Completions are not forwarded: capabilities are fixed before the backend's are known, and advertising one the
    backend lacks would promise what it cannot keep.
    """
    member = endpoint.members[0]

    def make(method: str, empty: Mapping[str, Any] | None) -> Callable[[Ctx, Any], Awaitable[Any]]:
        async def handler(ctx: Ctx, _params: Any) -> HandlerResult:
            caller = caller_of(ctx)
            with phase("policy"):
                allowed = decide(caller.principal, runtime.registry.gates[member.gate]).allowed
            if not allowed:
                if empty is not None:
                    return for_caller(ctx, dict(empty))
                raise InvalidParams(f"{method}: not found")
            raw = ctx.params or {}
            params = {k: v for k, v in raw.items() if k != "_meta"}
            result = await forward(
                ctx,
                runtime.pool.session(
                    member.source, await runtime.credentials.credential_for(member.source, caller), caller.principal
                ),
                method,
                params,
                timeout=runtime.settings.call_timeout_seconds,
                min_log_level=tracker.log_level(ctx),
            )
            if "cacheScope" in result:
                result["cacheScope"] = "private"
            return for_caller(ctx, result)

        return handler

    return {
        "on_list_resources": make("resources/list", {"resources": []}),
        "on_list_resource_templates": make("resources/templates/list", {"resourceTemplates": []}),
        "on_read_resource": make("resources/read", None),
        "on_list_prompts": make("prompts/list", {"prompts": []}),
        "on_get_prompt": make("prompts/get", None),
    }

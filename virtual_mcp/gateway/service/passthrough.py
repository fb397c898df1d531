"""Resources, prompts and completions of a single remote server, forwarded as they are to a caller who may use the
server.

A remote server's endpoint announces completions once its backend is known to offer them (`results.capabilities`);
a backend that answers a completion with -32601 anyway (it stopped offering them since) gets the caller an empty
completion, the truth (no suggestions), rather than an error for a capability the endpoint announced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_types.methods import INPUT_REQUIRED_METHODS

from virtual_mcp.errors import METHOD_NOT_FOUND, InvalidParams, UpstreamRpcError
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.relay import forward
from virtual_mcp.gateway.service.request_state import Issued
from virtual_mcp.gateway.service.subscriptions import subscription_handlers
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, Member
from virtual_mcp.timing import phase

Handler = Callable[[RequestContext, Mapping[str, Any]], Awaitable[dict[str, Any]]]
# What a caller who may not use the server gets: an empty list, or (for a read or a get) "not found".
_EMPTY: Mapping[str, Mapping[str, Any] | None] = {
    "resources/list": {"resources": []},
    "resources/templates/list": {"resourceTemplates": []},
    "resources/read": None,
    "prompts/list": {"prompts": []},
    "prompts/get": None,
    "completion/complete": {"completion": {"values": [], "hasMore": False}},
}
METHODS = frozenset(_EMPTY)
_ROUND_PARAMS = frozenset({"inputResponses", "requestState"})


def _target(params: Mapping[str, Any]) -> str:
    """The prompt's name or the resource's URI: what a requestState is bound to, with the arguments."""
    return str(params.get("name", params.get("uri", "")))


def without_rounds(params: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's params without the round-trip ones (the gateway's state and the answers go upstream its way)."""
    return {k: v for k, v in params.items() if k not in _ROUND_PARAMS}


def passthrough(endpoint: Endpoint, parts: ServiceParts) -> dict[str, Handler]:
    member = endpoint.members[0]

    def make(method: str, empty: Mapping[str, Any] | None) -> Handler:
        async def handler(ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
            caller = ctx.caller
            with phase("policy"):
                allowed = decide(caller.principal, parts.registry.gates[member.gate]).allowed
            if not allowed:
                if empty is not None:
                    return dict(empty)
                raise InvalidParams(f"{method}: not found")
            credential = await parts.credentials.credential_for(member.source, caller)
            session = parts.pool.session(member.source, credential, caller.principal, ctx.declared)
            timeout = parts.settings.call_timeout_seconds
            try:
                if method in INPUT_REQUIRED_METHODS:  # prompts/get, resources/read: the backend may ask first
                    issued = Issued.of(
                        caller.principal.subject, endpoint.path, method, _target(params), params.get("arguments")
                    )
                    upstream = without_rounds(params)
                    return await parts.rounds.call(ctx, issued, params, session, method, upstream, timeout=timeout)
                return await forward(ctx, session, method, params, timeout=timeout)
            except UpstreamRpcError as exc:
                if method == "completion/complete" and exc.code == METHOD_NOT_FOUND and empty is not None:
                    return dict(empty)  # the backend offers no completions: no suggestions
                raise

        return handler

    async def resolve(ctx: RequestContext, uri: str) -> tuple[Member, str] | None:
        with phase("policy"):
            allowed = decide(ctx.caller.principal, parts.registry.gates[member.gate]).allowed
        return (member, uri) if allowed else None

    handlers = {method: make(method, empty) for method, empty in _EMPTY.items()}
    return {**handlers, **subscription_handlers(parts, resolve)}

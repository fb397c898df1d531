"""`resources/subscribe` and `resources/unsubscribe` (2025-11-25 sessions): forwarded on the caller's own backend
session and recorded with where the updates go (service/resource_updates.py). `resolve` says which server a URI
belongs to and what the backend calls it, for a caller who may use that server (None: no such resource for them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from virtual_mcp.errors import InvalidParams, ResourceNotFound, TooManyRequests
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.relay import forward
from virtual_mcp.registry import Member
from virtual_mcp.upstream.backend import BackendSession

Handler = Callable[[RequestContext, Mapping[str, Any]], Awaitable[dict[str, Any]]]
Resolve = Callable[[RequestContext, str], Awaitable[tuple[Member, str] | None]]


def subscription_handlers(parts: ServiceParts, resolve: Resolve) -> dict[str, Handler]:
    async def target(ctx: RequestContext, uri: str) -> tuple[BackendSession, str]:
        if ctx.subscriber is None:
            raise InvalidParams("resource updates need a session to deliver them to")
        found = await resolve(ctx, uri)
        if found is None:
            raise ResourceNotFound(f"Resource not found: {uri}")
        member, backend_uri = found
        credential = await parts.credentials.credential_for(member.source, ctx.caller)
        return parts.pool.session(member.source, credential, ctx.caller.principal, ctx.declared), backend_uri

    async def subscribe(ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        uri: str = params["uri"]
        session, backend_uri = await target(ctx, uri)
        assert ctx.subscriber is not None
        if not parts.updates.has_room(ctx.subscriber):
            raise TooManyRequests(
                "this session watches as many resources as it may; unsubscribe from one first", retry_after=1
            )
        timeout = parts.settings.call_timeout_seconds
        parts.updates.subscribed(session, backend_uri, ctx.subscriber, uri)  # watching before the first update
        try:
            with anyio.fail_after(timeout):
                if await session.speaks_modern():  # 2026-07-28 backend: its subscriptions/listen stream
                    await session.listen_resource(backend_uri)
                else:
                    await forward(ctx, session, "resources/subscribe", {"uri": backend_uri}, timeout=timeout)
        except BaseException:
            parts.updates.unsubscribed(session, backend_uri, ctx.subscriber.key)
            raise
        return {}

    async def unsubscribe(ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        uri: str = params["uri"]
        session, backend_uri = await target(ctx, uri)
        assert ctx.subscriber is not None
        if parts.updates.unsubscribed(session, backend_uri, ctx.subscriber.key):
            if await session.speaks_modern():
                session.stop_listening(backend_uri)
            else:
                timeout = parts.settings.call_timeout_seconds
                await forward(ctx, session, "resources/unsubscribe", {"uri": backend_uri}, timeout=timeout)
        await ctx.subscriber.unsubscribed(uri)  # (it may have subscribed through another replica)
        return {}

    return {"resources/subscribe": subscribe, "resources/unsubscribe": unsubscribe}

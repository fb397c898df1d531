"""Forwarding one request to a backend and relaying what it says while it works (progress, log messages)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp_types import LOG_LEVEL_META_KEY, SERVER_INFO_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from virtual_mcp.gateway.views import GATEWAY_META_PREFIX, without_gateway_keys
from virtual_mcp.timing import phase
from virtual_mcp.upstream.session import UpstreamSession

_ORDERED_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LOG_LEVELS = frozenset(_ORDERED_LEVELS)
_RESERVED_PREFIX = "io.modelcontextprotocol/"


def caller_meta(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, Any]:
    raw = ctx.params or {}
    meta = raw.get("_meta") if isinstance(raw, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def for_version(result: dict[str, Any], version: str | None) -> dict[str, Any]:
    """Make a result (ours, or a backend's of either era) right for a caller speaking `version`; the SDK sieves the
    rest. The caller talks to the gateway, so a backend's own `serverInfo` stamp is removed (the gateway's is added
    to 2026-07-28 results on the way out), as are keys only the gateway may set, and a 2026-07-28 result says it is
    complete."""
    meta = result.get("_meta")
    if isinstance(meta, dict) and (
        SERVER_INFO_META_KEY in meta or any(key.startswith(GATEWAY_META_PREFIX) for key in meta)
    ):
        rest = without_gateway_keys(meta)
        rest.pop(SERVER_INFO_META_KEY, None)
        if rest:
            result["_meta"] = rest
        else:
            del result["_meta"]
    if version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
        result["resultType"] = "complete"
    return result


def passthrough_meta(inbound_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's `_meta` entries that travel upstream: all but the protocol's reserved ones (the gateway's to
    set for its own connection) and the progress token (the gateway uses its own)."""
    return {k: v for k, v in inbound_meta.items() if k != "progressToken" and not k.startswith(_RESERVED_PREFIX)}


def at_or_above(min_log_level: str | None) -> frozenset[str]:
    """The log levels a 2025-11-25 session's `logging/setLevel` choice lets through (all of them without one)."""
    if min_log_level not in _LOG_LEVELS:
        return _LOG_LEVELS
    return frozenset(_ORDERED_LEVELS[_ORDERED_LEVELS.index(min_log_level) :])


def log_message(params: Mapping[str, Any], levels: frozenset[str]) -> types.LoggingMessageNotification | None:
    """A backend's log message to relay to the caller, if its level is one of `levels`."""
    level = params.get("level")
    if not isinstance(level, str) or level not in levels:
        return None
    return types.LoggingMessageNotification(
        params=types.LoggingMessageNotificationParams.model_validate(params, by_name=False)
    )


async def forward(
    ctx: ServerRequestContext[Any, Any],
    session: UpstreamSession,
    method: str,
    params: Mapping[str, Any] | None,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    min_log_level: str | None = None,
) -> dict[str, Any]:
    """Send `method` upstream on behalf of the caller in `ctx` and return the backend's raw result.

    The caller's own `_meta` entries (trace context, application keys) travel with the request; the protocol's
    reserved entries are the gateway's to set for its own connection to the backend. `min_log_level` is a
    2025-11-25 caller's `logging/setLevel` choice.
    """
    inbound_meta = caller_meta(ctx)
    wants_progress = inbound_meta.get("progressToken") is not None
    upstream_meta = passthrough_meta(inbound_meta)
    if wants_progress:
        # A token of our own: the caller's token is meaningless to the backend and may collide across callers.
        upstream_meta["progressToken"] = f"vmcp-{uuid.uuid4().hex}"
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        level = inbound_meta.get(LOG_LEVEL_META_KEY)
        if level in _LOG_LEVELS:
            upstream_meta[LOG_LEVEL_META_KEY] = level
    else:
        upstream_meta[LOG_LEVEL_META_KEY] = "debug"
    log_levels = allowed_log_levels(ctx.protocol_version, inbound_meta) & at_or_above(min_log_level)

    async def relay(message: dict[str, Any]) -> None:
        kind = message.get("method")
        p = message.get("params")
        if not isinstance(p, dict):
            return
        if kind == "notifications/progress" and wants_progress:
            progress = p.get("progress")
            if isinstance(progress, int | float):
                total = p.get("total")
                note = p.get("message")
                await ctx.session.report_progress(
                    float(progress),
                    float(total) if isinstance(total, int | float) else None,
                    note if isinstance(note, str) else None,
                )
        elif kind == "notifications/message" and (logged := log_message(p, log_levels)) is not None:
            await ctx.session.send_notification(logged, related_request_id=ctx.request_id)

    with phase("upstream"):
        return await session.request(
            method, params, timeout=timeout, on_notification=relay, headers=headers, meta=upstream_meta or None
        )

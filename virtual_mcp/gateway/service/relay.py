"""Forwarding one request to a backend on behalf of a caller, relaying what the backend says while it works
(progress, log messages) to the caller's request stream."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mcp_types import LOG_LEVEL_META_KEY, LoggingMessageNotificationParams
from pydantic import ValidationError

from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.timing import phase
from virtual_mcp.upstream.backend import BackendSession

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_ALL_LEVELS = frozenset(LOG_LEVELS)
_RESERVED_PREFIX = "io.modelcontextprotocol/"


def caller_meta(params: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = params.get("_meta")
    return meta if isinstance(meta, Mapping) else {}


def passthrough_meta(inbound_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's `_meta` entries that travel upstream: all but the protocol's reserved ones (the gateway's to
    set for its own connection) and the progress token (the gateway uses its own)."""
    return {k: v for k, v in inbound_meta.items() if k != "progressToken" and not k.startswith(_RESERVED_PREFIX)}


def at_or_above(level: object) -> frozenset[str]:
    """The log levels from `level` up (every level for anything that is not one)."""
    if not isinstance(level, str) or level not in _ALL_LEVELS:
        return _ALL_LEVELS
    return frozenset(LOG_LEVELS[LOG_LEVELS.index(level) :])


def _deliverable_levels(ctx: RequestContext, meta: Mapping[str, Any]) -> frozenset[str]:
    """2026-07-28: log messages are a per-request opt-in (`_meta` logLevel, that level and above; none without it).
    2025-11-25: every level, filtered by the session's `logging/setLevel` choice."""
    if ctx.modern:
        requested = meta.get(LOG_LEVEL_META_KEY)
        return at_or_above(requested) if isinstance(requested, str) and requested in _ALL_LEVELS else frozenset()
    return at_or_above(ctx.session.log_level if ctx.session is not None else None)


def _progress_token(meta: Mapping[str, Any]) -> str | int | None:
    token = meta.get("progressToken")
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


async def forward(
    ctx: RequestContext,
    session: BackendSession,
    method: str,
    params: Mapping[str, Any],
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send `method` upstream with `params` (without `_meta`: the caller's is read from `ctx`'s request) and return
    the backend's raw result.

    The caller's own `_meta` entries (trace context, application keys) travel with the request; the protocol's
    reserved entries are the gateway's to set for its own connection to the backend. A caller's progress token is
    replaced by one of the gateway's (the caller's means nothing to the backend and may collide across callers).
    """
    inbound_meta = caller_meta(params)
    token = _progress_token(inbound_meta)
    upstream_meta = passthrough_meta(inbound_meta)
    if token is not None:
        upstream_meta["progressToken"] = f"vmcp-{uuid.uuid4().hex}"
    if ctx.modern:
        level = inbound_meta.get(LOG_LEVEL_META_KEY)
        if isinstance(level, str) and level in _ALL_LEVELS:
            upstream_meta[LOG_LEVEL_META_KEY] = level
    else:
        upstream_meta[LOG_LEVEL_META_KEY] = "debug"  # every level upstream; the session's choice applies here
    levels = _deliverable_levels(ctx, inbound_meta)

    async def relay(message: dict[str, Any]) -> None:
        kind = message.get("method")
        p = message.get("params")
        if not isinstance(p, dict):
            return
        if kind == "notifications/progress" and token is not None:
            progress = p.get("progress")
            if isinstance(progress, int | float) and not isinstance(progress, bool):
                out: dict[str, Any] = {"progressToken": token, "progress": float(progress)}
                total, note = p.get("total"), p.get("message")
                if isinstance(total, int | float) and not isinstance(total, bool):
                    out["total"] = float(total)
                if isinstance(note, str):
                    out["message"] = note
                await ctx.sink.notify("notifications/progress", out)
        elif kind == "notifications/message" and p.get("level") in levels:
            try:
                logged = LoggingMessageNotificationParams.model_validate(p, by_name=False)
            except ValidationError:
                return  # not a log message: nothing to relay
            await ctx.sink.notify(
                "notifications/message", logged.model_dump(by_alias=True, mode="json", exclude_none=True)
            )

    upstream_params = {k: v for k, v in params.items() if k != "_meta"}
    with phase("upstream"):
        return await session.request(
            method, upstream_params, timeout=timeout, on_notification=relay, headers=headers, meta=upstream_meta or None
        )

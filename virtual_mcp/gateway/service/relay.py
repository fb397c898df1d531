"""Forwarding one request to a backend on behalf of a caller, relaying what the backend says while it works
(progress, log messages) to the caller's request stream."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mcp_types import LOG_LEVEL_META_KEY, LoggingMessageNotificationParams
from mcp_types import methods as spec_methods
from pydantic import ValidationError

from virtual_mcp.errors import INVALID_PARAMS, METHOD_NOT_FOUND, AskFailed, CannotAsk, UpstreamProtocolError
from virtual_mcp.gateway.service.asks import Asker, checked_request
from virtual_mcp.gateway.service.context import RequestContext, Sink
from virtual_mcp.timing import phase
from virtual_mcp.upstream.backend import BackendSession, RequestHandler
from virtual_mcp.upstream.capabilities import declares

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_ALL_LEVELS = frozenset(LOG_LEVELS)
_RESERVED_PREFIX = "io.modelcontextprotocol/"
_ROUNDS = 16  # input_required rounds of one request answered by the gateway for a caller it can ask


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


def log_message(params: Mapping[str, Any], levels: frozenset[str]) -> dict[str, Any] | None:
    """A backend's log message as the caller gets it, if it is one at one of `levels` (None: drop it)."""
    if params.get("level") not in levels:
        return None
    try:
        logged = LoggingMessageNotificationParams.model_validate(params, by_name=False)
    except ValidationError:
        return None  # not a log message: nothing to relay
    return logged.model_dump(by_alias=True, mode="json", exclude_none=True)


def hear_outside_calls(ctx: RequestContext, session: BackendSession) -> None:
    """From now on, until the caller's 2025-11-25 session ends, if `session` is its principal's own:

    - the log messages `session`'s backend sends outside any request reach it on its GET stream, at the level it
      chose, if it chose one (`logging/setLevel`, its opt-in);
    - the backend's `roots/list` outside any request (its client's roots, asked after its handshake) is put to it on
      its GET stream, if it declared roots (the newest such session of the principal is asked). Elicitation and
      sampling outside any call are refused: a question for a call already answered must not reach anyone.

    A backend session shared by every caller of a server (`upstream_session: shared`) cannot say whom such a
    message is for: logs stay in the gateway's log, questions are refused. 2026-07-28 has no channel for either
    (`subscriptions/listen` carries neither)."""
    subscriber, state = ctx.subscriber, ctx.session
    if ctx.modern or subscriber is None or state is None or session.owner != ctx.caller.principal.subject:
        return
    outside = ctx.outside
    asks = f"asks:{subscriber.key}"
    if outside is not None and declares(ctx.declared, ("roots",)) and not session.watches(asks):

        async def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
            if method != "roots/list":
                raise CannotAsk(f"{method} outside a call is not relayed")
            return await outside.ask(method, checked_request(method, params, ctx.declared))

        session.watch_requests(asks, ask)
        subscriber.on_end(lambda: session.unwatch(asks))
    key = f"logs:{subscriber.key}"
    if state.log_level is None or session.watches(key):
        return

    def logged(message: Mapping[str, Any]) -> dict[str, Any] | None:
        params = message.get("params")
        if message.get("method") != "notifications/message" or not isinstance(params, Mapping):
            return None
        return log_message(params, at_or_above(state.log_level))

    async def relay(message: dict[str, Any]) -> None:
        params = logged(message)
        if params is not None:
            subscriber.push({"jsonrpc": "2.0", "method": "notifications/message", "params": params})

    session.watch(key, relay, lambda message: logged(message) is not None)
    subscriber.on_end(lambda: session.unwatch(key))


def _progress_token(meta: Mapping[str, Any]) -> str | int | None:
    token = meta.get("progressToken")
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


def _asking(ctx: RequestContext, asker: Asker | None) -> RequestHandler:
    """What a backend's request of its client goes through: the checks (service/asks.py), then the caller."""

    async def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
        checked = checked_request(method, params, ctx.declared)
        if asker is None:
            raise AskFailed(METHOD_NOT_FOUND, f"the caller cannot be asked {method} during this request")
        return await asker.ask(method, checked)

    return ask


async def forward(
    ctx: RequestContext,
    session: BackendSession,
    method: str,
    params: Mapping[str, Any],
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    asker: Asker | None = None,
    sink: Sink | None = None,
) -> dict[str, Any]:
    """Send `method` upstream with `params` (without `_meta`: the caller's is read from `ctx`'s request) and return
    the backend's raw result.

    What the backend asks of its client meanwhile goes to `asker` (default: `ctx.asker`, a 2025-11-25 caller's open
    stream), its notifications to `sink` (default: `ctx.sink`, the request's stream). A 2026-07-28 backend's
    `input_required` result is answered through `ctx.asker` too, and the request sent again with the answers, until
    the backend has its final result (at most `_ROUNDS` times); for a 2026-07-28 caller it is the result (the caller
    answers by retrying: service/rounds.py).

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
    out_to = sink if sink is not None else ctx.sink

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
                await out_to.notify("notifications/progress", out)
        elif kind == "notifications/message":
            logged = log_message(p, levels)
            if logged is not None:
                await out_to.notify("notifications/message", logged)

    hear_outside_calls(ctx, session)
    upstream_params = {k: v for k, v in params.items() if k != "_meta"}
    on_request = _asking(ctx, asker if asker is not None else ctx.asker)
    pushed = _asking(ctx, ctx.asker) if ctx.asker is not None else None
    with phase("upstream"):
        for _ in range(_ROUNDS):
            result = await session.request(
                method,
                upstream_params,
                timeout=timeout,
                on_notification=relay,
                headers=headers,
                meta=upstream_meta or None,
                on_request=on_request,
            )
            if pushed is None or not spec_methods.is_input_required(result):
                return result
            upstream_params = {**upstream_params, **await answer_rounds(result, pushed)}
    raise UpstreamProtocolError(session.ref.key, f"asked for input more than {_ROUNDS} times in one request")


async def answer_rounds(result: Mapping[str, Any], on_request: RequestHandler) -> dict[str, Any]:
    """The params that answer an `input_required` result: `inputResponses` for its `inputRequests` (each put to the
    caller through `on_request`) and its `requestState` back. A request that cannot be answered fails the call."""
    requests = result.get("inputRequests")
    responses: dict[str, Any] = {}
    if isinstance(requests, Mapping):
        for key, request in requests.items():
            if not isinstance(request, Mapping):
                raise AskFailed(INVALID_PARAMS, "malformed input request")
            responses[str(key)] = await on_request(str(request.get("method")), request.get("params") or {})
    out: dict[str, Any] = {"inputResponses": responses}
    if isinstance(result.get("requestState"), str):
        out["requestState"] = result["requestState"]
    return out

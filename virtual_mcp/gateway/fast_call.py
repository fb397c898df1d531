"""The `tools/call` and `tools/list` fast path for 2026-07-28 requests.

A 2026-07-28 request is self-contained (no session), so the gateway can answer a plain `tools/call` without the
SDK's per-request server machinery (a dispatch context, a runner, a middleware chain and two tasks per request,
about a quarter of the gateway's CPU per call): it validates the request with the SDK's own ladder, makes the same
policy decision, forwards over the pooled upstream session and shapes the result and any error with the SDK's own
functions, so the wire is what the SDK would have written.

It takes only the plain case and leaves everything else to the SDK path, before anything happens that cannot be
done twice: a request the ladder would reject, one that asks for progress or log messages (those need the event
stream), `Mcp-Param` headers, a tool whose schema declares them, a name the caller may not use. (A credential that
cannot be had is this path's to report, as the SDK path would: obtaining one may already have talked to a
provider.) Like the SDK, it answers with JSON unless the call outlasts the keepalive window;
then the answer becomes an event stream with pings, and a client that goes away cancels the call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server._streamable_http_modern import (  # the SDK's own wire, so both paths write the same bytes
    _SSE_HEADERS,
    _SSE_PING_INTERVAL,
    _sse_event,
    _to_jsonrpc_response,
    _write,
)
from mcp.server.lowlevel.server import Server
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request, find_duplicated_routing_header
from mcp_types import (
    CORE_RESULT_TYPES,
    LOG_LEVEL_META_KEY,
    SERVER_INFO_META_KEY,
    JSONRPCError,
    JSONRPCResponse,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from virtual_mcp.errors import GatewayError
from virtual_mcp.gateway.forward import for_version, passthrough_meta
from virtual_mcp.gateway.front import FastPath
from virtual_mcp.gateway.plain_call import PlainCalls, sieve
from virtual_mcp.outbound.consent import ConsentRequired
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import EndpointKind
from virtual_mcp.timing import phase

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)
_PARAM_HEADER_PREFIX = b"mcp-param-"
_LIST_ENTRIES = 256


class FastPaths:
    """The fast path for a request's era: 2026-07-28 requests carry their version in a header; anything else is a
    handshake-era session's (or the SDK path's to refuse)."""

    def __init__(self, modern: FastPath, session: FastPath) -> None:
        self._modern = modern
        self._session = session

    async def __call__(
        self, message: Mapping[str, Any], caller: Caller, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        for name, value in scope["headers"]:
            if name == b"mcp-protocol-version":
                if value.decode("latin-1") in MODERN_PROTOCOL_VERSIONS:
                    return await self._modern(message, caller, scope, receive, send)
                break
        return await self._session(message, caller, scope, receive, send)


class FastToolCalls:
    """`tools/call` on one endpoint, for 2026-07-28 requests that need nothing but the call."""

    def __init__(self, plain: PlainCalls, server: Server[Any]) -> None:
        self._plain = plain
        self._endpoint = plain.endpoint
        self._runtime = plain.runtime
        self._server = server
        self._render = plain.render
        self._lists: dict[tuple[str, Hashable], bytes] = {}  # serialised tools/list results

    async def __call__(
        self, message: Mapping[str, Any], caller: Caller, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Answer the request and return True, or return False having done nothing (the SDK path takes it)."""
        method = message.get("method")
        if method == "tools/list":
            return await self._list(message, caller, scope, receive, send)
        if method != "tools/call":
            return False
        plain = self._plain_request(message, scope)
        if plain is None:
            return False
        version, request_id, params = plain
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params["_meta"]
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return False

        route = await self._plain.route(caller, name)
        if route is None:
            return False

        # From here on the call is this path's: obtaining the credential may already talk to a provider (a token
        # refresh, a consent ticket), which must not happen twice.
        async def call() -> dict[str, Any]:
            result = await self._plain.call(scope, caller, name, route, arguments, passthrough_meta(meta))
            return self._wire_result(version, result)

        await self._answer(request_id, call, scope, receive, send)
        return True

    def _plain_request(self, message: Mapping[str, Any], scope: Scope) -> tuple[str, int | str, dict[str, Any]] | None:
        """(version, id, params) of a 2026-07-28 request the SDK's ladder accepts and that wants no notifications;
        None for anything else."""
        request = Request(scope)
        headers = request.headers
        version = headers.get("mcp-protocol-version")
        request_id = message.get("id")
        params = message.get("params")
        if (
            version not in MODERN_PROTOCOL_VERSIONS
            or isinstance(request_id, bool)
            or not isinstance(request_id, int | str)
            or not isinstance(params, dict)
            or not headers.get("content-type", "").lower().startswith("application/json")
            or check_accept_headers(request) != (True, True)
        ):
            return None
        raw_headers = scope["headers"]
        if any(name.startswith(_PARAM_HEADER_PREFIX) for name, _ in raw_headers):
            return None
        if find_duplicated_routing_header((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers):
            return None
        if isinstance(classify_inbound_request(message, headers=dict(headers)), InboundLadderRejection):
            return None
        meta = params.get("_meta")
        if not isinstance(meta, dict) or meta.get("progressToken") is not None or LOG_LEVEL_META_KEY in meta:
            return None
        return version, request_id, params

    async def _list(
        self, message: Mapping[str, Any], caller: Caller, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """`tools/list`: the answer for one set of subjects and one state of the backends' lists is serialised once
        (a list of 1,000 tools costs milliseconds to validate and encode) and then only framed with the id."""
        plain = self._plain_request(message, scope)
        if plain is None or plain[2].get("cursor") is not None:
            return False
        version, request_id, _ = plain
        try:
            body = await self._listed(version, caller)
        except Exception as exc:  # the top of this request: rendered as the SDK path would, never a bare 500
            if not isinstance(exc, GatewayError | MCPError):
                logger.exception("internal error serving tools/list")
            error = self._render(exc) if isinstance(exc, GatewayError) else exc
            await _write(
                JSONRPCError(jsonrpc="2.0", id=request_id, error=modern_error_data(error)), scope, receive, send
            )
            return True
        framed = b'{"jsonrpc":"2.0","id":' + json.dumps(request_id).encode() + b',"result":' + body + b"}"
        await Response(framed, media_type="application/json")(scope, receive, send)
        return True

    async def _listed(self, version: str, caller: Caller) -> bytes:
        runtime = self._runtime
        if self._endpoint.kind is EndpointKind.REMOTE:
            try:  # a per-user server the caller has not connected: they are told how to (URL elicitation)
                await runtime.credentials.credential_for(self._endpoint.members[0].source, caller)
            except ConsentRequired:
                raise
            except GatewayError:
                pass  # other credential problems leave the list empty; calls say why
        with phase("upstream"):
            key, tools = await runtime.view(self._endpoint.path).listing(caller, runtime.settings.list_deadline_seconds)
        cache_key = (version, key)
        body = self._lists.get(cache_key)
        if body is None:
            result = {"ttlMs": 0, "cacheScope": "private", "tools": tools, "resultType": "complete"}
            body = json.dumps(self._wire("tools/list", version, result), separators=(",", ":")).encode()
            if len(self._lists) >= _LIST_ENTRIES:
                self._lists.pop(next(iter(self._lists)))
            self._lists[cache_key] = body
        return body

    def _wire_result(self, version: str, result: dict[str, Any]) -> dict[str, Any]:
        """The backend's result as the SDK path would send it: the backend's own `serverInfo` stamp removed, sieved
        by the spec surface, and stamped with the gateway's."""
        return self._wire("tools/call", version, for_version(result, version))

    def _wire(self, method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
        """A result sieved by the spec surface and stamped with the gateway's `serverInfo`, as the SDK does (an
        extension's own `resultType` is left to it; an invalid result is the SDK's internal error)."""
        result_type = result.get("resultType")
        dumped = result
        if not isinstance(result_type, str) or result_type in CORE_RESULT_TYPES:
            dumped = sieve(method, version, result)
        dumped.setdefault("resultType", "complete")
        stamp = dumped.get("_meta")
        if stamp is None:
            dumped["_meta"] = {SERVER_INFO_META_KEY: self._server.server_info_stamp}
        elif isinstance(stamp, dict) and stamp.get(SERVER_INFO_META_KEY) is None:
            dumped["_meta"] = {**stamp, SERVER_INFO_META_KEY: self._server.server_info_stamp}
        return dumped

    async def _answer(
        self, request_id: int | str, call: Callable[[], Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """JSON once the call is done; past the keepalive window, an event stream with pings (as the SDK does)."""
        outcome: list[JSONRPCResponse | JSONRPCError] = []
        done = anyio.Event()

        async def run() -> None:
            outcome.append(await _to_jsonrpc_response(request_id, call()))
            done.set()

        async def watch_disconnect(cancel_scope: anyio.CancelScope) -> None:
            while (await receive()).get("type") != "http.disconnect":
                pass
            cancel_scope.cancel()  # the client went away: the call is cancelled (the backend's stream closes)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            tg.start_soon(run)
            with anyio.move_on_after(_SSE_PING_INTERVAL):
                await done.wait()
            if done.is_set():
                await _write(outcome[0], scope, receive, send)
            else:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                while not done.is_set():
                    await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                    with anyio.move_on_after(_SSE_PING_INTERVAL):
                        await done.wait()
                await send({"type": "http.response.body", "body": _sse_event(outcome[0]), "more_body": False})
            tg.cancel_scope.cancel()

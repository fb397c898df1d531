"""The 2026-07-28 wire (sessionless): every POST is one self-contained request, its protocol version, client info
and capabilities in its own `_meta` envelope, mirrored by the `Mcp-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
headers. The answer is JSON, or an event stream once the request has something to say before its result (a
notification) or has taken the keepalive interval. Closing the stream cancels the request. A notification POST is
acknowledged (202) and dropped: this era defines none from client to server over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
from mcp.shared.inbound import (
    InboundLadderRejection,
    classify_inbound_request,
    unsupported_protocol_version_rejection,
    validate_mcp_param_headers,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY
from starlette.datastructures import Headers
from starlette.types import Receive, Send

from virtual_mcp.errors import INVALID_REQUEST, PARSE_ERROR
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.service.results import error_object
from virtual_mcp.gateway.wire import framing
from virtual_mcp.gateway.wire.disconnect import cancelled_on_disconnect
from virtual_mcp.gateway.wire.keepalive import Keepalive
from virtual_mcp.gateway.wire.listen import Listens
from virtual_mcp.gateway.wire.messages import accepts, is_notification, is_request
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.upstream.capabilities import relayable

logger = logging.getLogger(__name__)
_PARAM_PREFIX = "mcp-param-"
_INVALID_BODY = {"code": INVALID_REQUEST, "message": "Body must be a single JSON-RPC request or notification object"}


async def _reject(send: Send, rejection: InboundLadderRejection, request_id: Any) -> None:
    failure: dict[str, Any] = {"code": rejection.code, "message": rejection.message}
    if rejection.data is not None:
        failure["data"] = rejection.data
    await framing.send_json(send, framing.error(request_id, failure))


async def _refuse_plainly(send: Send, status: int, headers: framing.Headers = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


class ModernWire:
    def __init__(self, service: McpService, keepalive: Keepalive, listens: Listens) -> None:
        self._service = service
        self._keepalive = keepalive
        self._listens = listens

    async def refuse_method(self, send: Send) -> None:
        """GET and DELETE: this era has no session to stream or end."""
        await _refuse_plainly(send, 405, ((b"allow", b"POST"),))

    async def post(
        self,
        caller: Caller,
        trace_id: str,
        message: dict[str, Any] | None,
        raw_headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
    ) -> None:
        headers = Headers(raw=raw_headers)
        has_json, has_sse = accepts(headers)
        if not (has_json and has_sse):
            await _refuse_plainly(send, 406)
            return
        if message is None:
            await framing.send_json(send, framing.error(None, {"code": PARSE_ERROR, "message": "Parse error"}))
            return
        if "id" not in message:
            await self._notification(message, headers, send)
            return
        if not is_request(message):
            await framing.send_json(send, framing.error(None, _INVALID_BODY), 400)
            return
        request_id = message["id"]
        # A repeated routing header (Mcp-Protocol-Version, Mcp-Method, Mcp-Name) never gets here: the front door
        # refuses every repeated single-valued header (gateway/middleware/front_guard.py SINGLE_VALUED).
        verdict = classify_inbound_request(message, headers=dict(headers))
        if isinstance(verdict, InboundLadderRejection):
            await _reject(send, verdict, request_id)
            return
        refused = self._param_headers(caller, message, headers)
        if refused is not None:
            await _reject(send, refused, request_id)
            return
        answer = framing.Answer(send, self._keepalive, json_allowed=True)
        params = message.get("params") or {}
        meta = params.get("_meta") if isinstance(params, dict) else None
        declared = relayable(meta.get(CLIENT_CAPABILITIES_META_KEY)) if isinstance(meta, dict) else {}
        ctx = RequestContext(caller, verdict.protocol_version, request_id, trace_id, answer, declared=declared)
        if message["method"] == "subscriptions/listen":
            await self._listens.serve(ctx, message.get("params"), receive, send)
            return
        outcome: dict[str, Any] | None = None
        with anyio.CancelScope() as request, cancelled_on_disconnect(receive, request):
            try:
                outcome = framing.response(
                    request_id, await self._service.handle(ctx, message["method"], message.get("params"))
                )
            except Exception as exc:  # noqa: BLE001 - the top of a request: rendered, never raised to the server
                outcome = framing.error(request_id, error_object(exc))
        if outcome is None:  # the client closed the stream: the request was cancelled
            answer.abandon()
            return
        await answer.finish(outcome)

    async def _notification(self, message: Mapping[str, Any], headers: Headers, send: Send) -> None:
        if not is_notification(message):
            await framing.send_json(send, framing.error(None, _INVALID_BODY), 400)
            return
        rejection = unsupported_protocol_version_rejection(headers.get("mcp-protocol-version", ""))
        if rejection is not None:
            await _reject(send, rejection, None)
            return
        await _refuse_plainly(send, 202)

    def _param_headers(
        self, caller: Caller, message: Mapping[str, Any], headers: Headers
    ) -> InboundLadderRejection | None:
        """A `tools/call`'s `Mcp-Param-*` headers checked against the arguments, for a tool whose schema declares
        them (only a tool the caller may use: a schema-specific answer would tell a forbidden tool from a missing
        one)."""
        params = message.get("params")
        if message.get("method") != "tools/call" or not isinstance(params, dict):
            return None
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            return None
        arguments = arguments or {}
        sent = any(key.startswith(_PARAM_PREFIX) for key in headers)
        if not sent and (not arguments or not self._service.declares_param_headers(caller, name)):
            return None  # nothing sent, nothing declared: no declaration can be violated
        schema = self._service.input_schema(caller, name)
        return validate_mcp_param_headers(schema, arguments, headers) if schema is not None else None

"""The front door of every route: repeated single-valued headers, Host and Origin (DNS-rebinding protection)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from virtual_mcp.error_responses import error_response
from virtual_mcp.errors import BadRequest
from virtual_mcp.fields import parse_authority
from virtual_mcp.inbound.origin import OriginPolicy
from virtual_mcp.outbound.overrides import HEADER as OVERRIDES_HEADER

# Headers a request carries at most once. Two copies are refused before anything reads either: otherwise one part
# of the gateway (or the SDK, or a proxy in front) may act on the first copy and another on the last.
SINGLE_VALUED: Mapping[bytes, str] = {
    b"host": "Host",
    b"origin": "Origin",
    b"authorization": "Authorization",
    b"mcp-session-id": "Mcp-Session-Id",
    b"mcp-protocol-version": "MCP-Protocol-Version",
    b"mcp-method": "Mcp-Method",
    b"mcp-name": "Mcp-Name",
    b"last-event-id": "Last-Event-ID",
    OVERRIDES_HEADER.encode(): OVERRIDES_HEADER,
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
}


class FrontGuard:
    """First check of every request (inside `RequestScope`): a request naming a single-valued header twice is
    refused (400); then, for every route but /healthz, DNS-rebinding protection: a well-formed Host the gateway
    answers to (400 when missing or malformed, 421 when foreign), then a browser Origin it trusts (403)."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy) -> None:
        self._app = app
        self._origins = origins
        self._verdicts: dict[bytes, tuple[int, str] | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        seen: set[bytes] = set()
        host = origin = None
        for name, value in scope.get("headers", []):
            if name in SINGLE_VALUED:
                if name in seen:
                    return error_response(
                        400,
                        BadRequest.jsonrpc_code,
                        f"Bad Request: repeated {SINGLE_VALUED[name]} header (send it once)",
                    )
                seen.add(name)
                if name == b"host":
                    host = value
                elif name == b"origin":
                    origin = value
        if scope.get("path") == "/healthz":
            return None  # load balancers probe it by address, under any Host
        if host is None:
            return error_response(400, BadRequest.jsonrpc_code, "Bad Request: missing Host header")
        verdict = self._host_verdict(host)
        if verdict is not None:
            return error_response(verdict[0], BadRequest.jsonrpc_code, verdict[1])
        if origin is not None and not self._origins.allows(origin.decode("latin-1"), host.decode("latin-1")):
            return error_response(403, BadRequest.jsonrpc_code, "Forbidden: foreign Origin")
        return None

    def _host_verdict(self, host: bytes) -> tuple[int, str] | None:
        """Why this Host is refused (status, message), or None; remembered per value (a few in practice, and
        parsing one costs more than the rest of this layer), up to a bound that any number of made-up ones cannot
        exceed."""
        if host in self._verdicts:
            return self._verdicts[host]
        authority = parse_authority(host.decode("latin-1"))
        verdict: tuple[int, str] | None = None
        if authority is None:
            verdict = (400, "Bad Request: malformed Host header (expected host[:port])")
        elif not self._origins.allows_authority(authority):
            verdict = (421, "Misdirected Request: unknown Host")
        if len(self._verdicts) >= _MAX_VERDICTS:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return verdict


_MAX_VERDICTS = 1024

"""A refusal as an HTTP answer: a JSON-RPC error object with no id, the status and headers its error class knows.

Below `inbound/` and `gateway/` alike, so the front door, the authentication middleware and every route answer a
refusal in one shape."""

from __future__ import annotations

import json

from starlette.responses import Response

from virtual_mcp.errors import GatewayError


def error_body(code: int, message: str) -> bytes:
    """The body of every refusal, whichever layer sends it (a configured endpoint's and an unknown path's must not
    differ by a byte)."""
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()


def error_response(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, media_type="application/json", headers=headers)


def gateway_error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return error_response(exc.http_status, exc.jsonrpc_code, exc.told, {**exc.http_headers, **(headers or {})})

"""One exception tree for the whole gateway; every class knows its wire forms.

The transport layers render these: the MCP server side as JSON-RPC errors, the HTTP layer as a status code,
the CLI as an exit code. Messages are written for the person who sees them and never carry secret values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

# JSON-RPC 2.0 codes (spec) and the gateway's own server-error range (-32000..-32099).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UPSTREAM_UNAVAILABLE = -32010
UPSTREAM_TIMEOUT = -32011
UPSTREAM_PROTOCOL = -32012
NOT_SUPPORTED_YET = -32013
REQUEST_CANCELLED = -32800  # MCP 2025-11-25: the answer to a request the client cancelled


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    jsonrpc_code: ClassVar[int] = INTERNAL_ERROR
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers that belong to this error's HTTP answer (e.g. Retry-After)."""
        return {}

    @property
    def told(self) -> str:
        """The message as the caller is told it. `message` is what logs and the audit trail keep; the two differ
        only where the caller must hear something that is theirs alone (a consent link)."""
        return self.message


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the configuration, located by file, entry and field."""

    file: str
    entry: str
    field: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.entry, self.field, self.message) if part)


class ConfigError(GatewayError):
    """The configuration cannot be loaded; carries every issue found, not just the first."""

    exit_code = 2

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        summary = "\n".join(str(i) for i in issues)
        super().__init__(f"invalid configuration ({len(issues)} problem(s)):\n{summary}")


class BadRequest(GatewayError):
    """The caller sent something malformed."""

    jsonrpc_code = INVALID_REQUEST
    http_status = 400
    exit_code = 2


class InvalidParams(BadRequest):
    jsonrpc_code = INVALID_PARAMS


class MethodNotFound(BadRequest):
    """A method this endpoint does not serve at the caller's protocol version."""

    jsonrpc_code = METHOD_NOT_FOUND
    http_status = 404

    def __init__(self, method: str) -> None:
        super().__init__("Method not found", data=method)


class RequestCancelled(GatewayError):
    """The caller cancelled the request (2025-11-25 `notifications/cancelled`, or its session ended)."""

    jsonrpc_code = REQUEST_CANCELLED

    def __init__(self) -> None:
        super().__init__("Request cancelled")


class InvalidIdentity(BadRequest):
    """A user, team or virtual account name that cannot be an identity (see `virtual_mcp/identity.py`); `reason`
    says why without quoting the name, for messages that must not repeat what the caller sent (a JWT's claims)."""

    def __init__(self, what: str, reason: str, shown: str | None = None) -> None:
        super().__init__(f"invalid {what} {shown}: {reason}" if shown else f"invalid {what}: {what} {reason}")
        self.what = what
        self.reason = reason


class ToolNotFound(InvalidParams):
    """Unknown tool, or one the caller may not see: both are answered identically on purpose."""

    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown tool: {name!r}")


class ResourceNotFound(InvalidParams):
    http_status = 404


class PromptNotFound(InvalidParams):
    http_status = 404


class Unauthorized(GatewayError):
    """No valid credential: answered 401 with a WWW-Authenticate challenge. The message never quotes the token."""

    jsonrpc_code = -32001
    http_status = 401
    exit_code = 3


class InvalidToken(Unauthorized):
    """A credential was presented and refused; `reason` says why (expired, wrong audience, bad signature...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid token: {reason}")
        self.reason = reason


class MalformedCredentialRequest(Unauthorized):
    """The credential was sent in a way that is never accepted (RFC 6750 invalid_request: e.g. in the query)."""

    http_status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid request: {reason}")
        self.reason = reason


class TooManyRequests(GatewayError):
    """One caller is over a per-principal limit (request rate, open sessions); everyone else is served. The
    message says which limit and when to retry."""

    jsonrpc_code = -32029
    http_status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class Overloaded(GatewayError):
    """The gateway as a whole is at a capacity bound (e.g. its maximum of client sessions)."""

    jsonrpc_code = -32030
    http_status = 503


class Forbidden(GatewayError):
    """Authenticated, but not allowed here."""

    jsonrpc_code = -32003
    http_status = 403
    exit_code = 3


class UpstreamError(GatewayError):
    """A backing MCP server could not serve the request."""

    jsonrpc_code = UPSTREAM_UNAVAILABLE
    http_status = 502

    def __init__(self, server: str, message: str, *, data: Any = None) -> None:
        super().__init__(f"backend {server!r}: {message}", data=data)
        self.server = server


class UpstreamUnavailable(UpstreamError):
    jsonrpc_code = UPSTREAM_UNAVAILABLE
    http_status = 502


class UpstreamSessionsExhausted(UpstreamError):
    """No backend session can be opened for this caller without closing one that has a call in flight: the caller's
    own quota (or the gateway's total) is full of busy sessions."""

    jsonrpc_code = UPSTREAM_UNAVAILABLE
    http_status = 503


class UpstreamTimeout(UpstreamError):
    jsonrpc_code = UPSTREAM_TIMEOUT
    http_status = 504


class UpstreamProtocolError(UpstreamError):
    """The backend answered, but not with valid MCP."""

    jsonrpc_code = UPSTREAM_PROTOCOL
    http_status = 502


class UnsendableHeader(GatewayError):
    """A header the gateway was about to write upstream holds what cannot travel in one (CR, LF, a control
    character: header injection, request smuggling on a pooled connection). Nothing was sent. The message names the
    header, never its value."""

    jsonrpc_code = UPSTREAM_UNAVAILABLE
    http_status = 502


class UpstreamRpcError(GatewayError):
    """The backend answered with a JSON-RPC error; it is passed to the caller as the backend said it."""

    http_status = 200

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.code = code


class AskFailed(GatewayError):
    """A request a backend made of its client (elicitation, sampling, roots) that the gateway could not have answered
    by the caller: the JSON-RPC error the backend is sent. `code` is the caller's own when the caller answered with
    an error, the gateway's otherwise."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.code = code


class CannotAsk(AskFailed):
    """This caller cannot be asked now (no stream to ask on, or it declared no such capability): another may be."""

    def __init__(self, message: str) -> None:
        super().__init__(METHOD_NOT_FOUND, message)


class NotSupportedYet(GatewayError):
    """A configured feature this build of the gateway cannot serve yet."""

    jsonrpc_code = NOT_SUPPORTED_YET
    http_status = 501

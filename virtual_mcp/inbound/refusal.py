"""The one answer to a caller who did not get in, whatever the route: 401 with an RFC 6750 challenge naming the RFC
9728 metadata document of what was asked for (400 invalid_request for a credential sent where one is never
accepted), or 429 with Retry-After for a caller over its request rate."""

from __future__ import annotations

import logging

from starlette.responses import Response
from starlette.types import Scope

from virtual_mcp.error_responses import gateway_error_response
from virtual_mcp.errors import InvalidToken, MalformedCredentialRequest, TooManyRequests, Unauthorized
from virtual_mcp.inbound.metadata import ResourceMetadata, document_path

logger = logging.getLogger(__name__)


def refusal(exc: Unauthorized | TooManyRequests, metadata: ResourceMetadata, scope: Scope) -> Response:
    if isinstance(exc, Unauthorized):
        return gateway_error_response(exc, {"WWW-Authenticate": challenge(exc, metadata, scope)})
    return gateway_error_response(exc)  # Retry-After is the error's own header


def challenge(exc: Unauthorized, metadata: ResourceMetadata, scope: Scope) -> str:
    """The `WWW-Authenticate` value refusing this request: its `resource_metadata` is the document of the request's
    path (`document_path`: an MCP endpoint's own, else the root one), which the gateway serves. Logged once, here."""
    path = scope.get("path", "")
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "localhost")
    base = metadata.base(scope.get("scheme", "http"), host)
    error = None
    if isinstance(exc, InvalidToken):
        error = "invalid_token"
    elif isinstance(exc, MalformedCredentialRequest):
        error = "invalid_request"
    logger.info("refused %s on %s: %s", scope.get("method"), path, exc.message)
    return metadata.challenge(base, document_path(path), error, getattr(exc, "reason", None))

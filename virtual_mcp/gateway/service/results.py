"""One shaper for every result the gateway sends, and one rendering for every error.

A result (the gateway's own, or a backend's passed on) is made right for the caller's protocol version: a backend's
`serverInfo` stamp and the keys only the gateway may set are removed, caching is private (what a caller sees depends
on who they are), spec results are validated against the version's surface and cut down to it, and 2026-07-28 results
carry `resultType` and the gateway's `serverInfo` stamp.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mcp_types import CORE_RESULT_TYPES, SERVER_INFO_META_KEY
from mcp_types import methods as spec_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from virtual_mcp.errors import INTERNAL_ERROR, INVALID_PARAMS, GatewayError, UpstreamRpcError
from virtual_mcp.gateway.service.endpoint_view import GATEWAY_META_PREFIX, without_gateway_keys
from virtual_mcp.registry import Endpoint, EndpointKind

logger = logging.getLogger(__name__)
SERVER_NAME = "virtual-mcp"
SERVER_VERSION = "0.1.0"
_PRIVATE = {"ttlMs": 0, "cacheScope": "private"}


class InvalidResult(GatewayError):
    """A result that does not fit the caller's protocol surface (the details stay in the log: they echo it)."""

    def __init__(self) -> None:
        super().__init__("Handler returned an invalid result")


def server_info(endpoint: Endpoint) -> dict[str, Any]:
    info = {"name": SERVER_NAME, "title": endpoint.title, "version": SERVER_VERSION}
    if endpoint.description:
        info["description"] = endpoint.description
    return info


def _subscribes(backend: Mapping[str, Any] | None) -> bool:
    resources = backend.get("resources") if backend is not None else None
    return isinstance(resources, Mapping) and resources.get("subscribe") is True


def offers_more_than_tools(endpoint: Endpoint) -> bool:
    """Whether a virtual server offers prompts or resources of its sources (its `prompts` and `resources`)."""
    return endpoint.kind is EndpointKind.VIRTUAL and any(
        m.offers is not None and m.offers.anything for m in endpoint.members
    )


def capabilities(endpoint: Endpoint, backend: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the endpoint serves. Tool list changes are announced (to 2025-11-25 sessions on their GET stream, to
    2026-07-28 clients on `subscriptions/listen`); a single remote server's resources and prompts are passed on (on
    /mcp, those of every remote server the caller may use), and its completions once its backend (`backend`: the
    capabilities it announced when last connected) is known to offer them: an endpoint never promises what its
    backend may lack."""
    offered: dict[str, Any] = {"logging": {}, "tools": {"listChanged": True}}
    if endpoint.kind in (EndpointKind.REMOTE, EndpointKind.AGGREGATE) or offers_more_than_tools(endpoint):
        offered["prompts"] = {"listChanged": False}
        offered["resources"] = {"listChanged": False, "subscribe": _subscribes(backend)}
    if endpoint.kind is EndpointKind.REMOTE and backend is not None and "completions" in backend:
        offered["completions"] = {}
    return offered


def for_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A backend's result without its own `serverInfo` stamp nor keys only the gateway may set; a 2026-07-28 result
    says it is complete."""
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


def shape(method: str, version: str, result: dict[str, Any], stamp: Mapping[str, Any]) -> dict[str, Any]:
    """`result` as the caller speaking `version` receives it (`stamp`: the endpoint's `serverInfo`)."""
    if method in spec_methods.CACHEABLE_METHODS and not spec_methods.is_input_required(result):
        result = {**_PRIVATE, **result}
        if "cacheScope" in result:
            result["cacheScope"] = "private"
    result = for_version(result, version)
    result_type = result.get("resultType")
    modern = version in MODERN_PROTOCOL_VERSIONS
    if method in spec_methods.SPEC_CLIENT_METHODS and (
        not modern or not isinstance(result_type, str) or result_type in CORE_RESULT_TYPES
    ):
        try:
            result = spec_methods.serialize_server_result(method, version, result)
        except ValidationError:
            logger.exception("the result for %r is invalid", method)
            raise InvalidResult from None
    if not modern:
        return result
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    if meta is None:
        result["_meta"] = {SERVER_INFO_META_KEY: dict(stamp)}
    elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
        result["_meta"] = {**meta, SERVER_INFO_META_KEY: dict(stamp)}
    return result


def error_object(exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC `error` member for an exception that ended a request. A backend's own error is passed on as the
    backend said it (the credentials its request presented were removed where its answer was read); anything that
    is not a GatewayError is a generic internal error whose details stay in the log."""
    if isinstance(exc, UpstreamRpcError):
        code, message, data = exc.code, exc.message, exc.data
    elif isinstance(exc, GatewayError):
        code, message, data = exc.jsonrpc_code, exc.told, exc.data
    elif isinstance(exc, ValidationError):
        code, message, data = INVALID_PARAMS, "Invalid request parameters", ""
    else:
        logger.error("internal error serving a request", exc_info=exc)
        code, message, data = INTERNAL_ERROR, "Internal error", None
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error

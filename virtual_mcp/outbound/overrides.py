"""`x-tfy-mcp-headers`: per-request header values for named servers, e.g. a caller's own Sentry token.

The header is a JSON object keyed `group/server`; each value is an object of header names to values. A value is
applied only to the server it names, only for header names in that server's `forwardable_headers`, and replaces
the configured value of that header. Every problem is a precise 400 that names the server and header, never a value.
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType

from virtual_mcp.config.models import is_managed_header
from virtual_mcp.errors import BadRequest
from virtual_mcp.fields import TOKEN, shown
from virtual_mcp.json_depth import nests_deeper_than
from virtual_mcp.policy import decide
from virtual_mcp.registry import Registry
from virtual_mcp.types import Principal, ServerRef

HEADER = "x-tfy-mcp-headers"
MAX_LENGTH = 16 * 1024
_NOT_FIELD_TEXT = re.compile(r"[^\t\x20-\x7e]")  # header values: printable ASCII and tab only
_GATEWAY_TOKEN = re.compile(r"vmcp_[0-9a-f]{12}_")

Overrides = Mapping[ServerRef, Mapping[str, str]]
NO_OVERRIDES: Overrides = MappingProxyType({})


def parse_overrides(raw: str | None, registry: Registry, principal: Principal, own_credential: str | None) -> Overrides:
    """Validate the header against the configuration and the caller's access. Raises BadRequest.

    `own_credential` is the bearer the caller authenticated to the gateway with: it may not be smuggled upstream.
    """
    if raw is None:
        return NO_OVERRIDES
    if len(raw) > MAX_LENGTH:
        raise BadRequest(f"{HEADER}: longer than {MAX_LENGTH} bytes")
    if nests_deeper_than(raw, 2):
        raise BadRequest(f"{HEADER}: must be a JSON object of objects of strings (nested deeper)")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest(f"{HEADER}: not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{HEADER}: must be a JSON object keyed 'group/server'")
    result: dict[ServerRef, Mapping[str, str]] = {}
    for key, headers in document.items():
        ref = _server(key, registry, principal)
        if not isinstance(headers, dict):
            raise BadRequest(f"{HEADER}: value for {shown(key)} must be an object of header names to string values")
        allowed = registry.remotes[ref].forwardable_headers
        where = f"{HEADER}: {shown(key)}"
        chosen: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower() if isinstance(name, str) else ""
            if not TOKEN.fullmatch(lower):
                raise BadRequest(f"{where}: {shown(name)} is not a valid header name")
            if is_managed_header(lower):
                raise BadRequest(f"{where}: header {shown(name)} is managed by the gateway and cannot be set")
            if lower not in allowed:
                raise BadRequest(f"{where}: header {shown(name)} is not in the server's forwardable_headers")
            if not isinstance(value, str):
                raise BadRequest(f"{where}: value of {shown(name)} must be a string")
            if _NOT_FIELD_TEXT.search(value):
                raise BadRequest(
                    f"{where}: value of {shown(name)} contains CR, LF, another control character or non-ASCII"
                )
            if (own_credential and own_credential in value) or _GATEWAY_TOKEN.search(value):
                raise BadRequest(f"{where}: value of {shown(name)} carries a gateway credential")
            if lower in chosen:
                raise BadRequest(f"{where}: header {shown(name)} is given more than once")
            chosen[lower] = value
        result[ref] = MappingProxyType(chosen)
    return MappingProxyType(result)


def _server(key: object, registry: Registry, principal: Principal) -> ServerRef:
    if not isinstance(key, str):
        raise BadRequest(f"{HEADER}: keys must be 'group/server' strings")
    try:
        ref = ServerRef.parse(key)
    except ValueError:
        raise BadRequest(f"{HEADER}: key {shown(key)} is not 'group/server'") from None
    # Unknown and not-yours get the same answer: the header must not reveal which servers exist. A caller may
    # reach a server directly or through a virtual server that includes it.
    if ref not in registry.remotes or not any(
        decide(principal, registry.gates[g]).allowed for g in registry.gates_of(ref)
    ):
        raise BadRequest(f"{HEADER}: no server {shown(key)} is available to you")
    return ref

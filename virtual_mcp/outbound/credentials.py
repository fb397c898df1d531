"""The credential the gateway presents to a backend for one request: none, static secret headers, checked
passthrough of the caller's IdP JWT, plus the caller's `x-tfy-mcp-headers` overrides for that server.

The caller's gateway credential is never among them: headers are built only from configuration, resolved secrets,
overrides, and (for passthrough) a JWT that was verified inbound and whose audience names the backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from virtual_mcp.config.models import HeaderAuthData, OAuth2AuthData, PassthroughAuthData
from virtual_mcp.config.secrets import SECRET_REF_RE, SecretRef, refs_in
from virtual_mcp.errors import GatewayError, NotSupportedYet
from virtual_mcp.outbound.overrides import NO_OVERRIDES, Overrides
from virtual_mcp.registry import Registry
from virtual_mcp.types import Authentication, Principal, ServerRef


class PassthroughRefused(GatewayError):
    jsonrpc_code = -32004
    http_status = 403


@dataclass(frozen=True, slots=True)
class Caller:
    """What the inbound plane established about one request, and the caller's header overrides."""

    auth: Authentication
    overrides: Overrides = field(default_factory=lambda: NO_OVERRIDES)

    @property
    def principal(self) -> Principal:
        return self.auth.principal


def fingerprint(headers: Mapping[str, str]) -> str:
    """A stable key for a set of upstream headers, so each distinct credential gets its own backend session."""
    return hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()


class OutboundCredentials:
    def __init__(self, registry: Registry, resolve: Callable[[SecretRef], str]) -> None:
        self._registry = registry
        # Static headers are resolved once per configuration load; values live only in this mapping.
        self._static: dict[ServerRef, dict[str, str]] = {}
        for ref, remote in registry.remotes.items():
            if isinstance(remote.auth, HeaderAuthData):
                self._static[ref] = {
                    name.lower(): _render(value, resolve) for name, value in remote.auth.headers.items()
                }

    def headers_for(self, ref: ServerRef, caller: Caller) -> dict[str, str]:
        """Headers for a request to `ref` on behalf of `caller`. Raises GatewayError when none can be made."""
        auth = self._registry.remotes[ref].auth
        headers: dict[str, str]
        if auth is None:
            headers = {}
        elif isinstance(auth, HeaderAuthData):
            headers = dict(self._static[ref])
        elif isinstance(auth, PassthroughAuthData):
            headers = {"authorization": f"Bearer {_passthrough(ref, auth, caller)}"}
        elif isinstance(auth, OAuth2AuthData):
            raise NotSupportedYet(f"backend {ref.key!r}: outbound auth oauth2 ({auth.grant_type}) is not supported yet")
        overrides = caller.overrides.get(ref)
        if overrides:
            headers.update(overrides)
        return headers


def _passthrough(ref: ServerRef, auth: PassthroughAuthData, caller: Caller) -> str:
    if caller.auth.verified_jwt is None:
        raise PassthroughRefused(
            f"backend {ref.key!r} accepts the caller's own identity only: authenticate to the gateway with an "
            "IdP JWT whose audience includes " + repr(auth.audience)
        )
    if auth.audience not in caller.auth.jwt_audiences:
        raise PassthroughRefused(
            f"backend {ref.key!r}: audience mismatch: your token's audience does not include {auth.audience!r}"
        )
    return caller.auth.verified_jwt


def _render(template: str, resolve: Callable[[SecretRef], str]) -> str:
    return SECRET_REF_RE.sub(lambda m: resolve(SecretRef(m.group(1), m.group(2), m.group(3))), template)


def secret_refs(registry: Registry) -> list[tuple[SecretRef, ServerRef]]:
    """Every secret the configuration references and the server that uses it, to be resolved at start-up."""
    found: list[tuple[SecretRef, ServerRef]] = []
    for ref, remote in sorted(registry.remotes.items()):
        auth = remote.auth
        texts: list[str] = []
        if isinstance(auth, HeaderAuthData):
            texts = list(auth.headers.values())
        elif isinstance(auth, OAuth2AuthData):
            texts = [auth.client_id, auth.client_secret]
        found.extend((secret, ref) for text in texts for secret in refs_in(text))
    return found

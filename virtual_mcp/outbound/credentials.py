"""The credential the gateway presents to a backend for one request: none, static secret headers, checked
passthrough of the caller's IdP JWT, plus the caller's `x-tfy-mcp-headers` overrides for that server.

The caller's gateway credential is never among them: headers are built only from configuration, resolved secrets,
overrides, and (for passthrough) a JWT that was verified inbound and whose audience names the backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from virtual_mcp.config.models import HeaderAuthData, OAuth2AuthData, PassthroughAuthData
from virtual_mcp.config.secrets import SECRET_REF_RE, SecretRef, refs_in
from virtual_mcp.errors import ConfigError, ConfigIssue, GatewayError, NotSupportedYet
from virtual_mcp.outbound.oauth_client import OAuthClient, TerminalGrantError, TokenSet
from virtual_mcp.outbound.overrides import NO_OVERRIDES, Overrides
from virtual_mcp.outbound.token_cache import token_key
from virtual_mcp.outbound.token_manager import Spawn, TokenManager
from virtual_mcp.registry import Registry
from virtual_mcp.types import Authentication, Principal, ServerRef

logger = logging.getLogger(__name__)
_FIELD_TEXT = re.compile(r"[\t\x20-\x7e]*")


class PassthroughRefused(GatewayError):
    jsonrpc_code = -32004
    http_status = 403


@dataclass(frozen=True, slots=True)
class Caller:
    """What the inbound plane established about one request, and the caller's header overrides."""

    auth: Authentication
    overrides: Overrides = field(default_factory=lambda: NO_OVERRIDES, repr=False)

    @property
    def principal(self) -> Principal:
        return self.auth.principal


def fingerprint(headers: Mapping[str, str]) -> str:
    """A stable key for a set of upstream headers, so each distinct credential gets its own backend session."""
    return hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """Upstream headers for one request. `shared`: the same for every caller of that server, so background work
    (catalog refreshes, the list_changed stream) may use it; a caller's own credential is used only for that caller's
    requests."""

    headers: Mapping[str, str] = field(repr=False)
    shared: bool
    # Which upstream session serves it. By default the headers themselves; a rotating credential (an OAuth access
    # token) names a stable identity instead, so a refresh does not open a new backend session.
    identity: str | None = None
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.identity or fingerprint(self.headers))


class OutboundCredentials:
    def __init__(
        self,
        registry: Registry,
        resolve: Callable[[SecretRef], str],
        tokens: TokenManager | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._registry = registry
        self._tokens = tokens
        self._http = http
        # OAuth clients for client-credentials servers; the token is for the backend's URL (RFC 8707 resource).
        self._clients: dict[ServerRef, OAuthClient] = {
            ref: OAuthClient(
                token_url=str(remote.auth.token_url),
                client_id=_render(remote.auth.client_id, resolve),
                client_secret=_render(remote.auth.client_secret, resolve),
                scopes=tuple(remote.auth.scopes),
                resource=remote.url,
            )
            for ref, remote in registry.remotes.items()
            if isinstance(remote.auth, OAuth2AuthData) and remote.auth.grant_type == "client_credentials"
        }
        # Static headers are resolved once per configuration load; values live only in this mapping.
        self._static: dict[ServerRef, dict[str, str]] = {}
        for ref, remote in registry.remotes.items():
            if isinstance(remote.auth, HeaderAuthData):
                rendered = {name.lower(): _render(value, resolve) for name, value in remote.auth.headers.items()}
                for name, value in rendered.items():
                    if not _FIELD_TEXT.fullmatch(value):
                        raise ConfigError(
                            [
                                ConfigIssue(
                                    "",
                                    f"server {ref.key!r}",
                                    f"auth_data.headers.{name}",
                                    "a referenced secret holds CR, LF, another control character or non-ASCII, "
                                    "which cannot travel in an HTTP header",
                                )
                            ]
                        )
                self._static[ref] = rendered

    async def credential_for(self, ref: ServerRef, caller: Caller, *, with_overrides: bool = True) -> Credential:
        """The credential for a request to `ref` on behalf of `caller`. Raises GatewayError when none can be made.

        `with_overrides=False` gives what the server's shared tool catalog is fetched with: the configured
        credential, or (passthrough) the caller's own, never a caller's `x-tfy-mcp-headers` values.
        """
        auth = self._registry.remotes[ref].auth
        headers: dict[str, str]
        shared = True
        identity: str | None = None
        if auth is None:
            headers = {}
        elif isinstance(auth, HeaderAuthData):
            headers = dict(self._static[ref])
        elif isinstance(auth, PassthroughAuthData):
            headers = {"authorization": f"Bearer {_passthrough(ref, auth, caller)}"}
            shared = False
        elif isinstance(auth, OAuth2AuthData) and ref in self._clients:
            token = await self._client_credentials_token(ref)
            headers = {"authorization": f"Bearer {token.access_token}"}
            identity = "oauth2-client-credentials"
        elif isinstance(auth, OAuth2AuthData):
            raise NotSupportedYet(f"backend {ref.key!r}: outbound auth oauth2 ({auth.grant_type}) is not supported yet")
        overrides = caller.overrides.get(ref) if with_overrides else None
        if overrides:
            headers.update(overrides)
            shared = False
            identity = None
        return Credential(headers, shared, identity)

    def attach(self, spawn: Spawn) -> None:
        if self._tokens is not None:
            self._tokens.attach(spawn)

    async def _client_credentials_token(self, ref: ServerRef) -> TokenSet:
        """One token per (server, provider account), shared by every caller authorized for the server."""
        if self._tokens is None or self._http is None:
            raise NotSupportedYet(f"backend {ref.key!r}: outbound OAuth needs the token manager (serve sets it up)")
        client, http = self._clients[ref], self._http

        async def obtain(current: TokenSet | None) -> TokenSet:
            if current is not None and current.refresh_token:
                try:
                    return await client.refresh(http, current.refresh_token)
                except TerminalGrantError:
                    logger.info("refresh token for %s no longer valid; asking for a new client-credentials token", ref)
            return await client.client_credentials(http)

        return await self._tokens.token(token_key("2lo", ref.key, f"client:{client.client_id}"), obtain)

    def scrub(self, text: str) -> str:
        """`text` with every configured secret value replaced: a backend that echoes the credential it received in
        an error must not hand the gateway's secret to the caller."""
        for headers in self._static.values():
            for value in headers.values():
                for part in {value, value.removeprefix("Bearer ").strip()}:
                    if len(part) >= 6 and part in text:
                        text = text.replace(part, "[REDACTED]")
        return text


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

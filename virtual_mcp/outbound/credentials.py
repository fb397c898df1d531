"""The credential the gateway presents to a backend for one request: none, static secret headers, checked
passthrough of the caller's IdP JWT, plus the caller's `x-tfy-mcp-headers` overrides for that server.

The caller's gateway credential is never among them: headers are built only from configuration, resolved secrets,
overrides, and (for passthrough) a JWT that was verified inbound and whose audience names the backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import anyio
import httpx

from virtual_mcp.config.models import HeaderAuthData, OAuth2AuthData, PassthroughAuthData
from virtual_mcp.config.secrets import SECRET_REF_RE, SecretRef, refs_in
from virtual_mcp.errors import BadRequest, ConfigError, ConfigIssue, GatewayError, NotSupportedYet
from virtual_mcp.outbound.consent import ConsentFlows, ConsentFor, ConsentLinkInvalid, ConsentRequired
from virtual_mcp.outbound.oauth_client import OAuthClient, TerminalGrantError, TokenEndpointError, TokenSet
from virtual_mcp.outbound.overrides import NO_OVERRIDES, Overrides
from virtual_mcp.outbound.provider_metadata import ProviderMetadata
from virtual_mcp.outbound.token_cache import token_key
from virtual_mcp.outbound.token_manager import Spawn, TokenManager
from virtual_mcp.registry import Registry
from virtual_mcp.types import Authentication, Principal, PrincipalKind, ServerRef

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
    # Where this caller reached the gateway (e.g. https://mcp.northwind.example): consent links point back here.
    base_url: str = "http://127.0.0.1"

    @property
    def principal(self) -> Principal:
        return self.auth.principal


@dataclass(slots=True)
class _Waiting:
    """Calls waiting for one user to connect one account, and the event that tells them."""

    connected: anyio.Event = field(default_factory=anyio.Event)
    callers: int = 0


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
    # The secret values among the headers (resolved secrets, tokens, a caller's JWT, forwarded values): the upstream
    # session removes them from everything the backend sends back. Literal text from the configuration is not secret.
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    # A stdio server's: the environment variables that carry it (`token_env`), its headers then being none.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
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
        *,
        token_timeout: float = 10.0,
        consent: ConsentFlows | None = None,
    ) -> None:
        self._registry = registry
        # Told when a user connects an account here (set by a fleet's runtime: callers elsewhere may wait for it).
        self.on_connected: Callable[[str, ServerRef], None] | None = None
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
                timeout=token_timeout,
            )
            for ref, remote in registry.remotes.items()
            if isinstance(remote.auth, OAuth2AuthData)
        }
        # Consent links and flows in progress: this process's, or the fleet's (any replica serves each step).
        self.consent = consent or ConsentFlows()
        # Callers waiting for a user to connect an account (a consent asked by URL elicitation), by (user, server).
        self._connecting: dict[tuple[str, ServerRef], _Waiting] = {}
        self._per_user = sorted(
            ref
            for ref, remote in registry.remotes.items()
            if isinstance(remote.auth, OAuth2AuthData) and remote.auth.grant_type == "authorization_code"
        )
        self._metadata = ProviderMetadata(http, token_timeout) if http is not None else None
        # stdio servers' environments, secrets resolved once per configuration load, and which values are secret.
        self._stdio_env: dict[ServerRef, tuple[dict[str, str], frozenset[str]]] = {}
        for ref, remote in registry.remotes.items():
            if remote.stdio is not None:
                env = {name: _render(value, resolve) for name, value in remote.stdio.env.items()}
                secret = frozenset(
                    s
                    for name, value in remote.stdio.env.items()
                    if refs_in(value)
                    for s in (env[name], *(resolve(r) for r in refs_in(value)))
                )
                self._stdio_env[ref] = (env, secret)
        # Static headers are resolved once per configuration load; values live only in these mappings.
        self._static: dict[ServerRef, dict[str, str]] = {}
        self._static_secrets: dict[ServerRef, frozenset[str]] = {}
        for ref, remote in registry.remotes.items():
            if isinstance(remote.auth, HeaderAuthData):
                rendered = {name.lower(): _render(value, resolve) for name, value in remote.auth.headers.items()}
                self._static_secrets[ref] = frozenset(
                    secret
                    for name, template in remote.auth.headers.items()
                    if refs_in(template)
                    for secret in (rendered[name.lower()], *(resolve(secret_ref) for secret_ref in refs_in(template)))
                )
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
        # The same for every caller without overrides: made once (its session key is a hash of the headers).
        self._fixed: dict[ServerRef, Credential] = {
            ref: Credential(MappingProxyType(dict(headers)), True, None, self._static_secrets[ref])
            for ref, headers in self._static.items()
        }
        self._fixed.update(
            {
                ref: Credential(MappingProxyType({}), True)
                for ref, remote in registry.remotes.items()
                if remote.auth is None
            }
        )

    async def credential_for(self, ref: ServerRef, caller: Caller, *, with_overrides: bool = True) -> Credential:
        """The credential for a request to `ref` on behalf of `caller`. Raises GatewayError when none can be made.

        `with_overrides=False` gives what the server's shared tool catalog is fetched with: the configured
        credential, or (passthrough) the caller's own, never a caller's `x-tfy-mcp-headers` values.
        """
        fixed = self._fixed.get(ref)
        overrides = caller.overrides.get(ref) if with_overrides else None
        if fixed is not None and not overrides:
            return fixed
        auth = self._registry.remotes[ref].auth
        headers: dict[str, str]
        secrets: frozenset[str] = frozenset()
        shared = True
        identity: str | None = None
        if auth is None:
            headers = {}
        elif isinstance(auth, HeaderAuthData):
            headers, secrets = dict(self._static[ref]), self._static_secrets[ref]
        elif isinstance(auth, PassthroughAuthData):
            jwt = _passthrough(ref, auth, caller)
            headers, secrets = _bearer(jwt)
            identity = _passthrough_identity(jwt)
            shared = False
        elif isinstance(auth, OAuth2AuthData):
            if auth.grant_type == "client_credentials":
                token = await self._client_credentials_token(ref)
                identity = "oauth2-client-credentials"
            else:
                token = await self._user_token(ref, caller)
                identity = _user_identity(caller)
                shared = False
            stdio = self._registry.remotes[ref].stdio
            if stdio is not None and stdio.token_env is not None:  # a process's credential is its environment
                env = {stdio.token_env: token.access_token}
                return Credential({}, shared, identity, frozenset(env.values()), MappingProxyType(env))
            headers, secrets = _bearer(token.access_token)
        if overrides:
            headers.update(overrides)
            # A forwarded value may be the caller's own secret (their token for the backend): treated as one.
            secrets = secrets | frozenset(overrides.values())
            shared = False
            identity = None
        return Credential(headers, shared, identity, secrets)

    def list_scope(self, ref: ServerRef, caller: Caller) -> str | None:
        """Which cached tool list of `ref` is `caller`'s (no I/O): None for a server with one configured credential
        (every caller is shown the same list); for a server called with each caller's own credential (passthrough,
        per-user OAuth), that credential's identity: the key of `credential_for(ref, caller, with_overrides=False)`.
        """
        if not self.per_caller(ref):
            return None
        if isinstance(self._registry.remotes[ref].auth, PassthroughAuthData):
            jwt = caller.auth.verified_jwt
            return _passthrough_identity(jwt) if jwt is not None else "passthrough:none"
        return _user_identity(caller)

    def per_caller(self, ref: ServerRef) -> bool:
        """Whether `ref` is called with each caller's own credential (passthrough, per-user OAuth)."""
        auth = self._registry.remotes[ref].auth
        return isinstance(auth, PassthroughAuthData) or (
            isinstance(auth, OAuth2AuthData) and auth.grant_type == "authorization_code"
        )

    async def _user_token(self, ref: ServerRef, caller: Caller) -> TokenSet:
        """The caller's own token for `ref` (authorization code + PKCE), or ConsentRequired with a link to get one."""
        principal = caller.principal
        if principal.kind is not PrincipalKind.USER:
            raise PassthroughRefused(f"backend {ref.key!r} uses per-user OAuth; only users can connect an account")
        if self._tokens is None or self._http is None:
            raise NotSupportedYet(f"backend {ref.key!r}: outbound OAuth needs the token manager (serve sets it up)")
        client, http = self._clients[ref], self._http
        key = user_token_key(ref, principal.name)

        async def consent(reason: str) -> ConsentRequired:
            ticket = await self.consent.ticket(principal.name, ref)
            return ConsentRequired(
                ref, f"{caller.base_url}/oauth/start?ticket={ticket}", self.consent.elicitation_id(ticket), reason
            )

        async def obtain(current: TokenSet | None) -> TokenSet:
            if current is not None and current.refresh_lost:
                raise await consent("your token could not be renewed safely (a refresh was interrupted)")
            if current is None or not current.refresh_token:
                raise await consent("no connected account")
            try:
                return await client.refresh(http, current.refresh_token)
            except TerminalGrantError:
                await self._tokens_forget(key)
                raise await consent("the connection expired or was revoked") from None

        return await self._tokens.token(key, obtain)

    async def _tokens_forget(self, key: str) -> None:
        if self._tokens is not None:
            await self._tokens.forget(key)

    async def finish_consent(self, state: str, browser: str | None, code: str, issuer: str | None) -> ConsentFor:
        """Exchange the provider's code (with the flow's PKCE verifier) and store the user's token set. The flow must
        come back to the browser that began it (`browser`, its consent cookie); `issuer` is the callback's `iss`
        (RFC 9207), which must name the server's configured issuer when both are known (mix-up defence)."""
        finished = await self.consent.finish(state, browser, code)
        auth = self._registry.remotes[finished.server].auth
        expected = str(auth.issuer) if isinstance(auth, OAuth2AuthData) and auth.issuer is not None else None
        if issuer is not None and expected is not None and issuer.rstrip("/") != expected.rstrip("/"):
            raise BadRequest("the authorization answer names another authorization server (iss); nothing was stored")
        if self._tokens is None or self._http is None:
            raise NotSupportedYet("outbound OAuth needs the token manager (serve sets it up)")
        client = self._clients[finished.server]
        token = await client.exchange_code(self._http, finished.code, finished.redirect_uri, finished.verifier)
        await self._tokens.store(user_token_key(finished.server, finished.user), token)
        self.heard_connected(finished.user, finished.server)
        if self.on_connected is not None:  # a caller on another replica may be waiting for it
            self.on_connected(finished.user, finished.server)
        return ConsentFor(finished.user, finished.server)

    def heard_connected(self, user: str, server: ServerRef) -> None:
        """`user` connected their account for `server` (here, or on another replica): the callers waiting for it go
        on."""
        waiting = self._connecting.pop((user, server), None)
        if waiting is not None:
            waiting.connected.set()

    def connecting_users(self) -> list[tuple[str, ServerRef]]:
        """Whose connection callers here wait for (to match another replica's news by a digest)."""
        return list(self._connecting)

    @contextlib.contextmanager
    def connecting(self, user: str, ref: ServerRef) -> Iterator[anyio.Event]:
        """An event set when `user` connects their account for `ref` through this process, from now on: taken
        before the user is asked, so a consent finished before the answer arrives is not missed. The registration
        ends with the block, so a consent never finished leaves nothing behind."""
        key = (user, ref)
        waiting = self._connecting.get(key)
        if waiting is None:
            waiting = self._connecting[key] = _Waiting()
        waiting.callers += 1
        try:
            yield waiting.connected
        finally:
            waiting.callers -= 1
            if waiting.callers == 0 and self._connecting.get(key) is waiting:
                del self._connecting[key]

    async def consent_redirect(self, ticket: str, browser: str, signed_in: Principal, redirect_uri: str) -> str:
        """Where the browser goes once `signed_in` proved, in `browser`, to be the ticket's user: the provider's
        authorization endpoint, once the provider's metadata (where its issuer is configured) confirms PKCE S256.
        A refused or unreadable provider leaves the ticket unused, so the same link works once the provider is
        fixed."""
        server = (await self.consent.claim(ticket, signed_in)).server
        auth = self._registry.remotes[server].auth
        if not isinstance(auth, OAuth2AuthData) or auth.authorization_url is None:
            raise ConsentLinkInvalid()
        if auth.issuer is not None:
            if self._metadata is None:
                raise NotSupportedYet("outbound OAuth needs the token manager (serve sets it up)")
            await self._metadata.require_s256(str(auth.issuer))
        client = self._clients[server]
        return await self.consent.begin(
            ticket,
            browser,
            signed_in,
            str(auth.authorization_url),
            client.client_id,
            client.scopes,
            client.resource or "",
            redirect_uri,
        )

    async def disconnect(self, user: str, ref: ServerRef) -> str:
        """Forget `user`'s tokens for `ref`, revoking them at the provider first where it has an RFC 7009
        endpoint. Returns what happened at the provider, for the caller and the audit trail."""
        key = user_token_key(ref, user)
        token = await self._tokens.peek(key) if self._tokens is not None else None
        outcome = await self._revoke_at_provider(ref, token) if token is not None else "nothing stored"
        if self._tokens is not None:
            await self._tokens.drop(key)
        return outcome

    async def disconnect_all(self, user: str) -> dict[str, str]:
        """`disconnect` for every per-user server `user` holds tokens for: server -> provider outcome."""
        return {ref: await self.disconnect(user, ServerRef.parse(ref)) for ref in await self.connected(user)}

    async def _revoke_at_provider(self, ref: ServerRef, token: TokenSet) -> str:
        auth = self._registry.remotes[ref].auth
        url = auth.revocation_url if isinstance(auth, OAuth2AuthData) else None
        if url is None or self._http is None:
            return "deleted (the provider has no revocation endpoint configured)"
        client = self._clients[ref]
        try:
            # The refresh token first: revoking it ends the grant (RFC 7009 2.1), then the access token, which
            # providers issuing self-contained JWTs cannot revoke (it then lives out its short lifetime).
            grant = bool(token.refresh_token) and await client.revoke(
                self._http, str(url), token.refresh_token or "", "refresh_token"
            )
            access = await client.revoke(self._http, str(url), token.access_token, "access_token")
        except TokenEndpointError as exc:
            logger.warning("revocation at the provider for %s failed: %s", ref, exc.message)
            return f"deleted; provider revocation failed: {exc.message}"
        if grant or access:
            return "revoked at the provider and deleted"
        return "deleted (the provider does not revoke these tokens)"

    async def forget_user(self, user: str) -> None:
        """Forget every per-user token of `user` this process holds in memory (a revocation elsewhere deleted them
        from the vault, revoking them at the provider first), and their consent links and flows in progress."""
        await self.consent.forget(user)
        if self._tokens is not None:
            for ref in self._per_user:
                await self._tokens.evict(user_token_key(ref, user))

    async def connected(self, user: str) -> list[str]:
        """The per-user OAuth servers `user` has a token for."""
        found = []
        for ref in self._per_user:
            if self._tokens and await self._tokens.peek(user_token_key(ref, user)) is not None:
                found.append(ref.key)
        return found

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

    def stdio_env(self, ref: ServerRef) -> tuple[dict[str, str], frozenset[str]]:
        """A stdio server's environment (secrets resolved) and the secret values in it (to keep out of its answers
        and of the log)."""
        env, secrets = self._stdio_env.get(ref, ({}, frozenset()))
        return dict(env), secrets


def _bearer(token: str) -> tuple[dict[str, str], frozenset[str]]:
    """The headers presenting `token`, and the secret among them (its spellings include the bare token)."""
    value = f"Bearer {token}"
    return {"authorization": value}, frozenset((value,))


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


def _passthrough_identity(jwt: str) -> str:
    """A passthrough credential by a digest of the caller's JWT: one session and one tool list per token, and the
    token itself is never a key in memory (nor in a log line that might print one)."""
    return "passthrough:" + hashlib.sha256(jwt.encode()).hexdigest()


def _user_identity(caller: Caller) -> str:
    """A per-user OAuth credential by its owner: stable across token refreshes."""
    return f"oauth2-user:{caller.principal.subject}"


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
        if remote.stdio is not None:
            texts += list(remote.stdio.env.values())
        found.extend((secret, ref) for text in texts for secret in refs_in(text))
    return found


def user_token_key(ref: ServerRef, user: str) -> str:
    return token_key("3lo", ref.key, f"user:{user}")

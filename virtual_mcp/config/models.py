"""Pydantic models of the `servers.d/*.yaml` schema. Unknown keys are errors everywhere (extra="forbid")."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from virtual_mcp.config.secrets import SECRET_SCHEME, is_secret_ref, refs_in
from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import InvalidIdentity
from virtual_mcp.identity import identity, subject


def _no_controls_in_url(value: object) -> object:
    """A URL parser drops CR, LF and tabs silently (WHATWG): the gateway would call another URL than the one written."""
    if isinstance(value, str) and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("URL contains a control character (CR, LF, tab, ...)")
    return value


# Every URL of the configuration: http or https, nothing the parser would silently change.
Url = Annotated[AnyHttpUrl, BeforeValidator(_no_controls_in_url)]

# Group and server names become parts of namespaced tool names joined by "__", so they may not contain "__"
# nor start or end with "_" or "-"; that keeps every prefix unambiguous.
NAME_PATTERN = r"^[A-Za-z0-9]+(?:(?:-+|_)[A-Za-z0-9]+)*$"
SUBJECT_PATTERN = r"^(user|team|virtualaccount):[^\s:][^\s]*$"
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers that identify a connection rather than a request; never configurable or forwardable.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "expect",
        "content-encoding",
    }
)


def is_managed_header(name: str) -> bool:
    """Headers the gateway itself sets or that describe the connection: never configured, never forwarded."""
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("mcp-param-")


_SENSITIVE_HEADER = re.compile(r"authorization|token|secret|key|cookie|password|credential", re.IGNORECASE)


def _canonical_subject(text: str) -> str:
    try:
        return subject(text)
    except InvalidIdentity as exc:
        raise ValueError(exc.message) from None


def _canonical(what: str) -> AfterValidator:
    def check(name: str) -> str:
        try:
            return identity(name, what)
        except InvalidIdentity as exc:
            raise ValueError(exc.message) from None

    return AfterValidator(check)


Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=40)]
# Identities in the configuration are stored in canonical form (ASCII letters folded, see virtual_mcp/identity.py),
# so `user:Alice@X.example` and a token or JWT for `alice@x.example` are the same identity.
Subject = Annotated[str, Field(pattern=SUBJECT_PATTERN, max_length=320), AfterValidator(_canonical_subject)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Collaborator(_Strict):
    subject: Subject
    role_id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]


class OAuth2AuthData(_Strict):
    type: Literal["oauth2"]
    grant_type: Literal["authorization_code", "client_credentials"]
    authorization_url: Url | None = None
    token_url: Url
    # RFC 7009: where `virtual-mcp revoke` and disconnecting an account revoke the provider's tokens.
    revocation_url: Url | None = None
    client_id: str = Field(min_length=1)
    client_secret: str
    scopes: list[str] = Field(default_factory=list)
    jwt_source: Literal["access_token", "id_token"] = "access_token"
    code_challenge_methods_supported: list[str] | None = None
    # The provider's issuer: its published metadata (RFC 8414 / OIDC discovery) must list PKCE S256 before a consent
    # flow starts. Without it, `code_challenge_methods_supported` above is the operator's word for it.
    issuer: Url | None = None

    @field_validator("client_secret")
    @classmethod
    def _secret_is_reference(cls, v: str) -> str:
        if not is_secret_ref(v):
            raise ValueError("must be a secret reference tfy-secret://tenant:group:key, never a literal value")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id_ref_well_formed(cls, v: str) -> str:
        if v.startswith(SECRET_SCHEME) and not is_secret_ref(v):
            raise ValueError("malformed secret reference (expected tfy-secret://tenant:group:key)")
        return v

    @model_validator(mode="after")
    def _grant_fields(self) -> OAuth2AuthData:
        if self.grant_type == "authorization_code":
            if self.authorization_url is None:
                raise ValueError("authorization_url is required for grant_type authorization_code")
            if (
                self.code_challenge_methods_supported is not None
                and "S256" not in self.code_challenge_methods_supported
            ):
                raise ValueError("code_challenge_methods_supported must include S256 (PKCE plain is refused)")
            if self.code_challenge_methods_supported is None and self.issuer is None:
                raise ValueError(
                    "PKCE S256 support must be established: declare code_challenge_methods_supported: [S256], or "
                    "give the provider's issuer so the gateway reads it from the provider's metadata (RFC 8414)"
                )
        return self


class HeaderAuthData(_Strict):
    type: Literal["header"]
    headers: dict[str, str] = Field(min_length=1)

    @field_validator("headers")
    @classmethod
    def _headers_valid(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if is_managed_header(name):
                raise ValueError(f"header {name!r} is managed by the gateway and cannot be configured")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: value may not contain CR or LF")
            if value.count(SECRET_SCHEME) != len(refs_in(value)):
                raise ValueError(
                    f"header {name!r}: malformed secret reference (expected tfy-secret://tenant:group:key)"
                )
            if _SENSITIVE_HEADER.search(name) and not refs_in(value):
                raise ValueError(
                    f"header {name!r} carries a credential: its value must reference a secret "
                    "(e.g. 'Bearer tfy-secret://tenant:group:key'), never hold it literally"
                )
        return v


class PassthroughAuthData(_Strict):
    type: Literal["passthrough"]
    audience: str = Field(min_length=1)


AuthData = Annotated[OAuth2AuthData | HeaderAuthData | PassthroughAuthData, Field(discriminator="type")]


class AuditPayloads(_Strict):
    """What of a server's calls the audit trail records beyond who, what and when (nothing, by default)."""

    arguments: bool = False
    results: bool = False
    # Keys whose values are replaced at any depth (case-insensitive), besides every credential-looking key.
    redact: list[str] = Field(default_factory=list)


# A server's alias in namespaced tool names: no `_`, so `__` (the separator) can never appear inside one.
ToolPrefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$", min_length=1, max_length=24)]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=64)]


class ToolOverride(_Strict):
    """How one of a server's tools is shown: another name (within the server's namespace), another description."""

    rename: ToolName | None = None
    description: str | None = Field(default=None, max_length=4096)


class RemoteServer(_Strict):
    name: Name
    type: Literal["integration/mcp-server/remote"]
    description: str | None = None
    # In namespaced tool names, this alias stands for `group__server` on /mcp and for `server` in a virtual server.
    tool_prefix: ToolPrefix | None = None
    # Per tool (by the backend's own name): `rename` and `description` overrides.
    tool_overrides: dict[str, ToolOverride] = Field(default_factory=dict)
    url: Url | None = None
    # streamable-http (the default), sse (the HTTP+SSE transport of 2024-11-05: `url` is its event stream), or stdio.
    transport: Literal["streamable-http", "sse", "stdio"] = "streamable-http"
    # transport: stdio: the process the gateway starts and supervises (see virtual_mcp/upstream/stdio.py). `env`
    # values may hold `tfy-secret://` references; the process gets only PATH and this environment.
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(default_factory=dict)
    cwd: str | None = None
    # transport: stdio with `auth_data` (oauth2): the environment variable that carries the access token. With
    # grant_type authorization_code it is each user's own, so each user gets their own process (upstream/stdio.py).
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    authorized_subjects: list[Subject] = Field(default_factory=list)
    auth_data: AuthData | None = None
    forwardable_headers: list[str] = Field(default_factory=list)
    audit: AuditPayloads | None = None
    # Whose 2025-11-25 backend session serves a call: each principal's own (the default: session state one user
    # creates at the backend is never seen by another), or one for every caller of the server's configured
    # credential (`shared`: only for a backend known to keep no state per session). Either way a session never
    # serves two credentials.
    upstream_session: Literal["per_principal", "shared"] = "per_principal"

    @model_validator(mode="after")
    def _transport_fields(self) -> RemoteServer:
        if self.transport == "stdio":
            if self.command is None:
                raise ValueError("transport stdio needs a command")
            wrong = ["url"] if self.url is not None else []
            wrong += ["forwardable_headers"] if self.forwardable_headers else []
            if wrong:
                raise ValueError(f"transport stdio takes no {', '.join(wrong)} (its credentials go in env)")
            if self.auth_data is not None and not isinstance(self.auth_data, OAuth2AuthData):
                raise ValueError(
                    "transport stdio takes auth_data of type oauth2 only (with token_env: the variable that carries "
                    "the access token); put static secrets in env"
                )
            if (self.auth_data is None) != (self.token_env is None):
                raise ValueError(
                    "transport stdio: auth_data (oauth2) and token_env go together: token_env names the environment "
                    "variable that carries the access token"
                )
            if self.token_env is not None and self.token_env in self.env:
                raise ValueError(f"token_env {self.token_env}: also set in env; the token is the gateway's to set")
            for name, value in self.env.items():
                if SECRET_SCHEME in value and not refs_in(value):
                    raise ValueError(f"env {name}: malformed secret reference")
        else:
            if self.url is None:
                raise ValueError("url is required (or set transport: stdio with a command)")
            extra = [n for n in ("command", "cwd", "token_env") if getattr(self, n) is not None] + [
                n for n in ("args", "env") if getattr(self, n)
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for transport stdio")
        return self

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, v: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if v is None:
            return v
        if v.username or v.password:
            raise ValueError("must not carry credentials (user:password@); use auth_data with a secret reference")
        return v

    @field_validator("forwardable_headers")
    @classmethod
    def _forwardable_valid(cls, v: list[str]) -> list[str]:
        for name in v:
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if is_managed_header(name):
                raise ValueError(f"header {name!r} is managed by the gateway and cannot be forwarded")
        return v


class VirtualSource(_Strict):
    server: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]
    tools: list[str] | None = Field(default=None, min_length=1)
    # The source's prompts (by name) and resources and resource templates (by URI, or URI template) this virtual
    # server offers too: shell-style patterns (`*`, `?`, `[...]`); none unless listed, since a virtual server offers
    # exactly what it names, and what it leaves out of a server must not come back through its prompts or resources.
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    resources: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class VirtualServer(_Strict):
    name: Name
    type: Literal["integration/mcp-server/virtual"]
    description: str | None = None
    # On /mcp, this alias stands for `group__virtual-server` in its tools' names.
    tool_prefix: ToolPrefix | None = None
    authorized_subjects: list[Subject] = Field(default_factory=list)
    servers: list[VirtualSource] = Field(min_length=1)


Integration = Annotated[RemoteServer | VirtualServer, Field(discriminator="type")]


class ServerGroupFile(_Strict):
    name: Name
    type: Literal["provider-account/mcp-server-group"]
    description: str | None = None
    collaborators: list[Collaborator] = Field(default_factory=list)
    integrations: list[Integration] = Field(default_factory=list)


class Team(_Strict):
    name: Annotated[str, Field(pattern=r"^[^\s:]+$"), _canonical("team")]
    description: str | None = None
    members: list[Annotated[str, Field(pattern=r"^[^\s@]+@[^\s@]+$"), _canonical("user")]] = Field(default_factory=list)


class VirtualAccount(_Strict):
    name: Annotated[str, Field(pattern=r"^[^\s:]+$"), _canonical("virtual account")]
    description: str | None = None


class IdentitiesFile(_Strict):
    type: Literal["identities"]
    teams: list[Team] = Field(default_factory=list)
    virtual_accounts: list[VirtualAccount] = Field(default_factory=list)


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "HS256", "HS384", "HS512"]


class JwtSettings(_Strict):
    """How the gateway verifies IdP-issued JWTs presented as bearer tokens."""

    issuer: str = Field(min_length=1)
    audience: str | list[str]
    jwks_url: Url | None = None
    hs256_secret: str | None = None  # a tfy-secret:// reference to a shared HMAC secret
    algorithms: list[JwtAlgorithm] | None = None  # default: RS256+ES256 with jwks_url, HS256 with hs256_secret
    subject_claim: str = "sub"
    teams_claim: str | None = None
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_seconds: int = Field(default=300, ge=10, le=86400)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if (self.jwks_url is None) == (self.hs256_secret is None):
            raise ValueError("exactly one of jwks_url and hs256_secret is required")
        if self.hs256_secret is not None and not is_secret_ref(self.hs256_secret):
            raise ValueError("hs256_secret must be a secret reference tfy-secret://tenant:group:key")
        symmetric = {a for a in self.effective_algorithms if a.startswith("HS")}
        if self.jwks_url is not None and symmetric:
            raise ValueError("HMAC algorithms cannot be used with jwks_url (algorithm confusion)")
        if self.hs256_secret is not None and symmetric != set(self.effective_algorithms):
            raise ValueError("only HMAC algorithms can be used with hs256_secret")
        return self

    @property
    def effective_algorithms(self) -> list[str]:
        if self.algorithms:
            return list(self.algorithms)
        return ["HS256"] if self.hs256_secret is not None else ["RS256", "ES256"]

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class InboundSettings(_Strict):
    jwt: JwtSettings | None = None
    # The public base URL of the gateway (e.g. https://mcp.northwind.example), used in RFC 9728 metadata;
    # without it the URL the request arrived at is used.
    public_url: Url | None = None


class MetricsSettings(_Strict):
    """Who may read `/metrics` (server, tool and principal-kind labels): without a token, loopback clients only."""

    bearer_token: str | None = None  # a tfy-secret:// reference; when set, `Authorization: Bearer <it>` is required

    @field_validator("bearer_token")
    @classmethod
    def _a_reference(cls, value: str | None) -> str | None:
        if value is not None and not is_secret_ref(value):
            raise ValueError("bearer_token must be a secret reference tfy-secret://tenant:group:key")
        return value


class NamingSettings(_Strict):
    """How long a namespaced tool name may be: `max_length` (64, what most clients accept) minus the room reserved
    for the prefix a client adds of its own (e.g. Claude Code's `mcp__<server>__`). Longer names are shortened with
    a hash, the last resort; `virtual-mcp check` warns about every name it can tell would be."""

    max_length: int = Field(default=64, ge=24, le=128)
    reserved_for_client_prefix: int = Field(default=0, ge=0, le=100)

    @model_validator(mode="after")
    def _room_left(self) -> NamingSettings:
        if self.budget < 24:
            raise ValueError(f"max_length minus reserved_for_client_prefix is {self.budget}; it must be at least 24")
        return self

    @property
    def budget(self) -> int:
        return self.max_length - self.reserved_for_client_prefix


class GatewayFile(_Strict):
    type: Literal["gateway"]
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    limits: Limits = Field(default_factory=Limits)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    naming: NamingSettings = Field(default_factory=NamingSettings)


ConfigFile = Annotated[ServerGroupFile | IdentitiesFile | GatewayFile, Field(discriminator="type")]

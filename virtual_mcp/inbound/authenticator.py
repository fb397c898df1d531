"""Who is calling: a gateway token, an IdP JWT, or (loopback local mode only) the configured developer.

Tokens are read from the `Authorization: Bearer` header only; a token in the query string is refused outright,
because URLs end up in logs, browser history and proxies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from virtual_mcp.errors import InvalidIdentity, InvalidToken, MalformedCredentialRequest, Unauthorized
from virtual_mcp.identity import identity
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.rate_limit import Admission
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.registry import Registry
from virtual_mcp.types import Authentication, AuthMethod, Principal, PrincipalKind

logger = logging.getLogger(__name__)
GATEWAY_TOKEN_PREFIX = "vmcp_"  # noqa: S105 - a prefix, not a token
MAX_BEARER_CHARS = 16 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 2.1: one token, no spaces, quotes or controls
_QUERY_CREDENTIALS = frozenset({"access_token", "token", "api_key", "apikey", "bearer"})


class TokenRecord(Protocol):
    @property
    def kind(self) -> PrincipalKind: ...
    @property
    def name(self) -> str: ...


class TokenLookup(Protocol):
    async def verify(self, token: str) -> TokenRecord | None: ...


class VerifiedClaims(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def teams(self) -> frozenset[str]: ...
    @property
    def audiences(self) -> frozenset[str]: ...
    @property
    def issued_at(self) -> float | None: ...


class JwtCheck(Protocol):
    async def verify(self, token: str) -> VerifiedClaims: ...


@dataclass(frozen=True, slots=True)
class Authenticator:
    registry: Registry
    tokens: TokenLookup | None = None
    jwt: JwtCheck | None = None
    local: LocalIdentity | None = None
    revocations: RevocationList | None = None
    limiter: Admission | None = None

    async def authenticate(self, headers: Mapping[str, str], query: str, client_host: str | None) -> Authentication:
        """Who is calling. Raises Unauthorized (no credential), InvalidToken (a credential that was refused) or
        TooManyRequests (the caller is over its request rate)."""
        auth = await self._identify(headers, query, client_host)
        if self.limiter is not None:
            await self.limiter.admit(auth.principal)
        return auth

    async def _identify(self, headers: Mapping[str, str], query: str, client_host: str | None) -> Authentication:
        if query and any(k.lower() in _QUERY_CREDENTIALS for k, _ in parse_qsl(query, keep_blank_values=True)):
            raise MalformedCredentialRequest(
                "credentials in the query string are never accepted; use the Authorization header"
            )
        header = headers.get("authorization")
        if header is None:
            if self.local is not None:
                principal = self.local.authenticate(client_host)
                if principal is not None:
                    return Authentication(principal, AuthMethod.LOCAL)
            raise Unauthorized("missing bearer token (Authorization: Bearer ...)")
        scheme, _, token = header.partition(" ")
        token = token.strip(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        if len(token) > MAX_BEARER_CHARS:
            raise InvalidToken(f"token too large (over {MAX_BEARER_CHARS} characters)")
        if not _B64TOKEN.fullmatch(token):
            raise InvalidToken("malformed bearer token (one RFC 6750 b64token expected)")
        if token.startswith(GATEWAY_TOKEN_PREFIX):
            return await self._gateway_token(token)
        if self.jwt is not None:
            return await self._idp_jwt(token)
        raise InvalidToken("unrecognized token")

    async def _gateway_token(self, token: str) -> Authentication:
        record = await self.tokens.verify(token) if self.tokens is not None else None
        if record is None:
            raise InvalidToken("unknown, revoked or expired gateway token")
        try:
            # Canonical when stored (TokenStore.create, the identity migration); checked again all the same.
            name = identity(record.name, "token subject")
        except InvalidIdentity as exc:
            # The reason only: the refusal is sent in a header (WWW-Authenticate), never the stored name.
            raise InvalidToken(f"the token's subject is not a valid identity: it {exc.reason}") from None
        if record.kind is PrincipalKind.VIRTUAL_ACCOUNT:
            # A service identity exists only while the configuration declares it: removing it cuts it off.
            if name not in self.registry.virtual_accounts:
                raise InvalidToken(f"virtual account {name!r} is not declared in the configuration")
            principal = Principal(name, PrincipalKind.VIRTUAL_ACCOUNT)
        else:
            principal = Principal(name, PrincipalKind.USER, self.registry.teams_of(name))
        return Authentication(principal, AuthMethod.TOKEN, bearer=token)

    async def _idp_jwt(self, token: str) -> Authentication:
        assert self.jwt is not None
        claims = await self.jwt.verify(token)
        try:
            user = identity(claims.subject, "subject")
        except InvalidIdentity as exc:  # the reason only: refusals never quote the token's contents
            raise InvalidToken(f"the subject claim is not a valid identity: it {exc.reason}") from None
        principal = Principal(user, PrincipalKind.USER, self.registry.teams_of(user) | _teams(claims.teams))
        cutoff = self.revocations.revoked_at(principal.subject) if self.revocations is not None else None
        if cutoff is not None and (claims.issued_at is None or claims.issued_at <= cutoff):
            raise InvalidToken("this identity's access was revoked; a token issued before that is not accepted")
        return Authentication(
            principal, AuthMethod.JWT, verified_jwt=token, jwt_audiences=claims.audiences, bearer=token
        )


def _teams(claimed: frozenset[str]) -> frozenset[str]:
    """The IdP's teams in canonical form. A name that cannot be an identity (an AD group "Domain Users", with a space)
    can match no configured subject, so it is left out rather than refusing the user's token."""
    teams = set()
    for team in claimed:
        try:
            teams.add(identity(team, "team"))
        except InvalidIdentity as exc:
            logger.info("a team in a JWT's teams claim was left out: it %s", exc.reason)
    return frozenset(teams)

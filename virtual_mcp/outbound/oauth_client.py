"""OAuth 2 token endpoint client: client credentials, refresh, and authorization-code exchange (with PKCE).

Errors are sorted by what the caller should do: `invalid_grant` is terminal (the grant is gone: reconnect),
5xx, 429 and network errors are transient (retry with backoff), anything else is a configuration problem. No
message ever carries a secret, a code, a verifier or a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from virtual_mcp.errors import GatewayError
from virtual_mcp.fields import header_problem
from virtual_mcp.outbound.scrubber import Scrubber


class TokenEndpointError(GatewayError):
    """The provider refused in a way retrying cannot fix (bad client, unsupported grant, bad scope)."""

    jsonrpc_code = -32005
    http_status = 502


class TerminalGrantError(TokenEndpointError):
    """`invalid_grant`: the refresh token or code is no longer valid; the user must connect again."""


class TransientTokenError(TokenEndpointError):
    """5xx, 429, timeouts, connection errors: worth retrying later."""

    jsonrpc_code = -32006
    http_status = 503


class RefreshInDoubt(TransientTokenError):
    """A refresh request reached the provider but no answer came back (read timeout, connection dropped).

    The provider may have rotated the refresh token, and presenting a rotated one again is reuse (which providers
    punish by revoking the whole grant), so this refresh token is never sent again; it is not retried."""


class _SentWithoutAnswer(TransientTokenError):
    """The request may have reached the provider; its outcome is unknown (a timeout after sending, a dropped
    connection). Retrying is safe for a client-credentials request, not for a refresh."""


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What a token endpoint answered, with when it was obtained (wall clock, seconds)."""

    access_token: str = field(repr=False)
    obtained_at: float
    expires_in: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - a token type name
    # Write-ahead mark: the process (token manager instance) that has sent, or is about to send, this set's refresh
    # token to the provider. Found by any other process, it means a refresh was interrupted (a crash): the
    # provider may have rotated the refresh token, so it must not be presented again.
    refreshing_by: str | None = None
    # The refresh token was given up for that reason; the access token serves until it expires.
    refresh_lost: bool = False
    # The version of the stored record this set was read as (None: not read from a store). A write of a set with a
    # version happens only if the record is still at it: see TokenCache.set.
    version: int | None = field(default=None, compare=False)

    def expires_at(self, default_lifetime: float) -> float:
        return self.obtained_at + (self.expires_in if self.expires_in is not None else default_lifetime)

    def refresh_due_at(self, default_lifetime: float, fraction: float = 0.8) -> float:
        """The moment `fraction` of the lifetime has passed: refresh from then on, before the token expires."""
        lifetime = self.expires_in if self.expires_in is not None else default_lifetime
        return self.obtained_at + lifetime * fraction


@dataclass(frozen=True, slots=True)
class OAuthClient:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ()
    resource: str | None = None  # RFC 8707 resource indicator: the backend the token is for
    timeout: float = 10.0  # seconds, per token request

    async def client_credentials(self, http: httpx.AsyncClient) -> TokenSet:
        return await self._post(http, {"grant_type": "client_credentials", **self._scope_and_resource()})

    async def refresh(self, http: httpx.AsyncClient, refresh_token: str) -> TokenSet:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **self._scope_and_resource()}
        try:
            token = await self._post(http, data)
        except _SentWithoutAnswer:
            raise RefreshInDoubt(
                "the token endpoint did not answer a refresh it may have carried out; the refresh token is not reused"
            ) from None
        if token.refresh_token is None:
            # Providers that do not rotate keep the old refresh token valid.
            token = TokenSet(
                token.access_token, token.obtained_at, token.expires_in, refresh_token, token.scope, token.token_type
            )
        return token

    async def exchange_code(self, http: httpx.AsyncClient, code: str, redirect_uri: str, verifier: str) -> TokenSet:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        if self.resource:
            data["resource"] = self.resource
        return await self._post(http, data)

    async def revoke(self, http: httpx.AsyncClient, revocation_url: str, token: str, hint: str) -> bool:
        """RFC 7009: ask the provider to revoke `token` (a refresh token revokes its grant at most providers).

        True: revoked or already invalid (200, RFC 7009 2.2). False: the provider does not revoke this kind of token
        (`unsupported_token_type`, e.g. self-contained JWT access tokens). Anything else raises, without the token.
        """
        body = {"token": token, "token_type_hint": hint, "client_id": self.client_id}
        body["client_secret"] = self.client_secret
        try:
            response = await http.post(revocation_url, data=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise TransientTokenError(f"revocation endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientTokenError(f"revocation endpoint answered HTTP {response.status_code}")
        if response.status_code == 200:
            return True
        error = _error_code(_json(response), (token, self.client_secret))
        if error == "unsupported_token_type":
            return False
        raise TokenEndpointError(f"revocation refused: {error} (HTTP {response.status_code})")

    def _scope_and_resource(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.scopes:
            out["scope"] = " ".join(self.scopes)
        if self.resource:
            out["resource"] = self.resource
        return out

    async def _post(self, http: httpx.AsyncClient, data: Mapping[str, str]) -> TokenSet:
        body = {**data, "client_id": self.client_id, "client_secret": self.client_secret}
        try:
            response = await http.post(
                self.token_url, data=body, headers={"accept": "application/json"}, timeout=self.timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: nothing happened at the provider.
            raise TransientTokenError(f"token endpoint unreachable: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise _SentWithoutAnswer(f"token endpoint did not answer: {type(exc).__name__}") from None
        payload = _json(response)
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientTokenError(f"token endpoint answered HTTP {response.status_code}")
        if response.status_code >= 400:
            error = _error_code(payload, (body[key] for key in _PRESENTED if key in body))
            if error == "invalid_grant":
                raise TerminalGrantError("the provider no longer accepts this grant (invalid_grant)")
            raise TokenEndpointError(f"token endpoint refused the request: {error} (HTTP {response.status_code})")
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenEndpointError("token endpoint answered without an access_token")
        if header_problem("authorization", f"Bearer {access}") is not None:
            # Written into `Authorization` as it is, a CR or LF would add headers (or a whole request) of the
            # provider's choosing to what the gateway sends the backend. Refused here, and again where headers are
            # written (a token stored before this check existed).
            raise TokenEndpointError(
                "token endpoint answered an access_token that cannot travel in an HTTP header "
                "(CR, LF, another control character or non-ASCII); it is not used"
            )
        expires = payload.get("expires_in")
        refresh = payload.get("refresh_token")
        return TokenSet(
            access_token=access,
            obtained_at=time.time(),
            expires_in=float(expires) if isinstance(expires, int | float) and expires > 0 else None,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            scope=payload.get("scope") if isinstance(payload.get("scope"), str) else None,
            token_type=str(payload.get("token_type", "Bearer")),
        )


_PRESENTED = ("client_secret", "refresh_token", "code", "code_verifier")  # what is secret in a token request


def _error_code(payload: Mapping[str, Any], presented: Iterable[str]) -> str:
    """The provider's `error` code, fit for a message: bounded, and without anything the request presented (a
    provider may echo the client secret, a code or a token it was sent)."""
    return str(Scrubber(presented).scrub(str(payload.get("error", "unknown_error"))))[:64]


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}

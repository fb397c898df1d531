"""An authorization server's published metadata (RFC 8414, OpenID Connect Discovery 1.0), read before a consent
flow to confirm that the provider supports PKCE with S256.

MCP's authorization rules say a client must not start an authorization code flow unless the server's metadata lists
S256 in `code_challenge_methods_supported`; an absent field means the server does not support PKCE at all, and a
provider that silently ignores the challenge would leave the code unprotected. Where a server's configuration names
the provider's `issuer`, that metadata decides; without one, the operator's declaration in the configuration does
(the loader requires one of the two).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from virtual_mcp.errors import GatewayError

# A provider that publishes S256 keeps doing so; a confirmation is trusted this long before it is read again.
CONFIRMED_SECONDS = 3600.0


class ProviderMetadataError(GatewayError):
    """The provider's metadata could not be read, or does not allow a flow the gateway would start."""

    jsonrpc_code = -32005
    http_status = 502


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be, in the order MCP clients try them (RFC 8414 section 3, then OIDC)."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if not path:
        return [f"{origin}/.well-known/oauth-authorization-server", f"{origin}/.well-known/openid-configuration"]
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


class ProviderMetadata:
    """Confirms S256 support per issuer, reading its metadata at most once an hour while it keeps confirming."""

    def __init__(self, http: httpx.AsyncClient, timeout: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._http = http
        self._timeout = timeout
        self._clock = clock
        self._confirmed: dict[str, float] = {}  # issuer -> when S256 was last confirmed

    async def require_s256(self, issuer: str) -> None:
        """Raise `ProviderMetadataError` unless `issuer`'s metadata lists S256. A refusal is not remembered, so a
        provider that is fixed works on the next try."""
        confirmed = self._confirmed.get(issuer)
        if confirmed is not None and self._clock() - confirmed < CONFIRMED_SECONDS:
            return
        document = await self._read(issuer)
        if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            raise ProviderMetadataError(
                f"the metadata published for issuer {issuer} names another issuer; the gateway does not use it"
            )
        methods = document.get("code_challenge_methods_supported")
        if not isinstance(methods, list) or "S256" not in methods:
            listed = "does not list code_challenge_methods_supported (no PKCE)"
            if isinstance(methods, list):
                listed = f"lists code_challenge_methods_supported {[str(m)[:16] for m in methods[:8]]}"
            raise ProviderMetadataError(
                f"the provider {issuer} {listed}; the gateway requires PKCE with S256 and does not start this flow"
            )
        self._confirmed[issuer] = self._clock()

    async def _read(self, issuer: str) -> dict[str, Any]:
        problems = []
        for url in metadata_urls(issuer):
            try:
                response = await self._http.get(url, timeout=self._timeout, headers={"accept": "application/json"})
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            if response.status_code != 200:
                problems.append(f"{url}: HTTP {response.status_code}")
                continue
            try:
                document = response.json()
            except ValueError:
                problems.append(f"{url}: not JSON")
                continue
            if isinstance(document, dict):
                return document
            problems.append(f"{url}: not a JSON object")
        raise ProviderMetadataError(f"could not read the provider's metadata ({'; '.join(problems)})")

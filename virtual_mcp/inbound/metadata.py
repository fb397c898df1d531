"""OAuth 2.0 Protected Resource Metadata (RFC 9728) and the 401 challenge that points clients at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WELL_KNOWN = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """What the gateway says about itself as a protected resource."""

    authorization_servers: tuple[str, ...] = ()
    public_url: str | None = None  # e.g. https://mcp.northwind.example; else the URL the request arrived at

    def base(self, scheme: str, host: str) -> str:
        return self.public_url.rstrip("/") if self.public_url else f"{scheme}://{host}"

    def document(self, base: str, path: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "resource": base + path,
            "bearer_methods_supported": ["header"],
            "resource_name": "virtual-mcp" + (f" {path}" if path and path != "/" else ""),
        }
        if self.authorization_servers:
            doc["authorization_servers"] = list(self.authorization_servers)
        return doc

    def challenge(self, base: str, path: str, error: str | None = None, description: str | None = None) -> str:
        """The WWW-Authenticate value for a 401 on `path` (RFC 6750 + RFC 9728 resource_metadata)."""
        parts = [f'resource_metadata="{base}{WELL_KNOWN}{path}"']
        if error:
            parts.append(f'error="{error}"')
        if description:
            # A quoted-string of printable ASCII only: the reason may quote token-supplied text.
            safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in description)
            parts.append(f'error_description="{safe}"')
        return "Bearer " + ", ".join(parts)

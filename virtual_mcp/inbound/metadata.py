"""OAuth 2.0 Protected Resource Metadata (RFC 9728) and the 401 challenge that points clients at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from virtual_mcp.registry import AGGREGATE_PATH, ENDPOINT_PATH

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
            "resource": base + quote(path, safe=_PATH_SAFE),
            "bearer_methods_supported": ["header"],
            "resource_name": "virtual-mcp" + (f" {path}" if path and path != "/" else ""),
        }
        if self.authorization_servers:
            doc["authorization_servers"] = list(self.authorization_servers)
        return doc

    def challenge(self, base: str, path: str, error: str | None = None, description: str | None = None) -> str:
        """The WWW-Authenticate value for a 401 on `path` (RFC 6750 + RFC 9728 resource_metadata). `path` is the
        request's (decoded, caller-chosen) path: it enters the URL percent-encoded, and every auth-param value is a
        well-formed quoted-string, so no request can add parameters to the challenge or break the header."""
        parts = [f"resource_metadata={quoted(base + WELL_KNOWN + quote(path, safe=_PATH_SAFE))}"]
        if error:
            parts.append(f"error={quoted(error)}")
        if description:
            parts.append(f"error_description={quoted(description)}")
        return "Bearer " + ", ".join(parts)


def document_path(path: str) -> str:
    """The path whose document describes the resource at `path`: an MCP endpoint's own, configured or not (metadata
    is public and must not be a directory of which servers exist), else the gateway's root document (""). Both the
    metadata route and every 401 challenge use this, so a challenge never names a document that is not served.

    A path holding a line feed gets the root document: the router's path parameters stop at one, so no route could
    serve that path's own (and no configured name holds one)."""
    if path == AGGREGATE_PATH or (ENDPOINT_PATH.fullmatch(path) is not None and "\n" not in path):
        return path
    return ""


# Unreserved characters and "/": everything else in the decoded path is percent-encoded, "%" itself and the
# sub-delimiters included (a naive client splitting the challenge on "," or "=" meets none of them).
_PATH_SAFE = "/-._~"


def quoted(value: str) -> str:
    """`value` as an RFC 9110 quoted-string: `"` and `\\` escaped as quoted-pairs; what no header may carry (controls,
    non-ASCII) replaced by `?`."""
    safe = "".join(c if " " <= c <= "~" or c == "\t" else "?" for c in value)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'

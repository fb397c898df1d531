"""The gateway's HTTP routes besides the MCP endpoints (those are `gateway/wire/`), one module per concept: `health`
(liveness, readiness), `metrics`, `metadata` (RFC 9728 documents), `admin` (a server group's view for its
managers), `unconfigured` (a server path nothing is configured at), `consent` with `consent_page` (the OAuth
consent pages) and `connections` (a user's connected accounts)."""

from __future__ import annotations

from virtual_mcp.gateway.middleware.request_scope import is_endpoint_path
from virtual_mcp.gateway.routes.admin import PREFIX as ADMIN
from virtual_mcp.gateway.routes.connections import PREFIX as CONNECTIONS


def needs_caller(path: str) -> bool:
    """Whether the route at `path` serves only an authenticated caller (`inbound.middleware.Authenticate` sees to
    it): every MCP endpoint path, configured or not, the admin views and the connections API. The others are public
    (health, metadata), check a credential of their own (metrics), or belong to a browser (the consent pages)."""
    return is_endpoint_path(path) or _under(path, ADMIN) or _under(path, CONNECTIONS)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")

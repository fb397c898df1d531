"""The gateway's HTTP routes besides the MCP endpoints (those are `gateway/wire/`), one module per concept: `health`
(liveness, readiness), `metrics`, `metadata` (RFC 9728 documents), `admin` (a server group's view for its
managers), `unconfigured` (a server path nothing is configured at), `consent` with `consent_page` (the OAuth
consent pages) and `connections` (a user's connected accounts)."""

from __future__ import annotations

from virtual_mcp.gateway.routes.admin import PREFIX as ADMIN
from virtual_mcp.gateway.routes.connections import PREFIX as CONNECTIONS
from virtual_mcp.registry import AGGREGATE_PATH

# `/mcp` and everything under `/mcp-server/` (as `middleware.request_scope.is_endpoint_path`), the admin views and the
# connections API; one set lookup and one C-level prefix test, as every MCP request asks.
_EXACTLY = frozenset({AGGREGATE_PATH, ADMIN, CONNECTIONS})
_UNDER = ("/mcp-server/", ADMIN + "/", CONNECTIONS + "/")


def needs_caller(path: str) -> bool:
    """Whether the route at `path` serves only an authenticated caller (`inbound.middleware.Authenticate` sees to
    it): every MCP endpoint path, configured or not, the admin views and the connections API. The others are public
    (health, metadata), check a credential of their own (metrics), or belong to a browser (the consent pages)."""
    return path in _EXACTLY or path.startswith(_UNDER)

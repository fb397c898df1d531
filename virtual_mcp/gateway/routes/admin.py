"""`/admin/groups/{group}`: a read-only view of a server group for its managers (collaborators with role
`mcp-server-manager`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from virtual_mcp.error_responses import gateway_error_response
from virtual_mcp.errors import Forbidden, GatewayError
from virtual_mcp.inbound.middleware import authentication
from virtual_mcp.registry import Registry
from virtual_mcp.types import Principal, ServerRef
from virtual_mcp.upstream.catalog import ToolCatalog

MANAGER_ROLE = "mcp-server-manager"
PREFIX = "/admin"


def admin_routes(registry: Registry, catalog: ToolCatalog) -> list[Route]:
    async def admin_group(request: Request) -> Response:
        principal = authentication(request.scope).principal
        try:
            return JSONResponse(group_view(registry, catalog, request.path_params["group"], principal))
        except GatewayError as exc:
            return gateway_error_response(exc)

    return [Route(PREFIX + "/groups/{group}", admin_group)]


def group_view(registry: Registry, catalog: ToolCatalog, group: str, principal: Principal) -> dict[str, Any]:
    """The group's configuration, tools and access, or Forbidden. Never a secret: auth is described by its kind."""
    collaborators = registry.collaborators.get(group)
    managers = {subject for subject, role in collaborators or () if role == MANAGER_ROLE}
    # Unknown group and not-a-manager are one answer, so the endpoint does not reveal which groups exist.
    if collaborators is None or not (principal.subjects() & managers):
        raise Forbidden(f"Forbidden: you do not manage a server group named {group!r}")
    servers: list[dict[str, Any]] = []
    for ref, remote in sorted(registry.remotes.items()):
        if ref.group != group:
            continue
        auth: dict[str, Any] = {"type": remote.auth.type if remote.auth else "none"}
        if remote.auth is not None and remote.auth.type == "oauth2":
            auth["grant_type"] = remote.auth.grant_type
        servers.append(
            {
                "name": ref.name,
                "type": "remote",
                "url": remote.url,
                "description": remote.description,
                "authorized_subjects": sorted(remote.authorized_subjects),
                "auth": auth,
                "forwardable_headers": sorted(remote.forwardable_headers),
                "tools": _tools(catalog, ref, None),
            }
        )
    for ref, virtual in sorted(registry.virtuals.items()):
        if ref.group != group:
            continue
        servers.append(
            {
                "name": ref.name,
                "type": "virtual",
                "description": virtual.description,
                "authorized_subjects": sorted(virtual.authorized_subjects),
                "sources": [
                    {"server": src.key, "tools": sorted(tools) if tools is not None else None}
                    for src, tools in virtual.sources
                ],
                "tools": sorted(t for src, tools in virtual.sources for t in _tools(catalog, src, tools)),
            }
        )
    return {
        "group": group,
        "collaborators": [{"subject": s, "role_id": r} for s, r in collaborators],
        "servers": servers,
    }


def _tools(catalog: ToolCatalog, ref: ServerRef, only: frozenset[str] | None) -> list[str]:
    names = [t["name"] for t in catalog.known_tools(ref)]
    return sorted(n for n in names if only is None or n in only)

"""OAuth 2.0 Protected Resource Metadata (RFC 9728): the root document and one per MCP endpoint path, configured or
not (`document_path`); every 401 challenge names one of these."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from virtual_mcp.inbound.metadata import WELL_KNOWN, ResourceMetadata, document_path


def metadata_routes(metadata: ResourceMetadata) -> list[Route]:
    async def resource_metadata(request: Request) -> Response:
        path = "/" + request.path_params.get("path", "")
        if path != "/" and document_path(path) != path:
            return JSONResponse({"error": "not_found"}, status_code=404)
        base = metadata.base(request.url.scheme, request.headers.get("host", "localhost"))
        return JSONResponse(metadata.document(base, "" if path == "/" else path))

    return [Route(WELL_KNOWN, resource_metadata), Route(WELL_KNOWN + "/{path:path}", resource_metadata)]

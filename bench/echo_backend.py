"""The benchmark's backend: the MCP SDK's low-level server with one `echo` tool, stateless, JSON responses.

Run as `python -m bench.echo_backend --port P`. It does as little work per call as the SDK allows, so what the
benchmark measures through a proxy is the proxy's cost, not the tool's. With `--sessions` it is a 2025-11-25 backend
that keeps a session per client (and refuses 2026-07-28 requests, as a server built before that version does), so
every principal the gateway serves holds a live backend session.
"""

from __future__ import annotations

import argparse
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from starlette.types import ASGIApp, Receive, Scope, Send

ECHO_TOOL = types.Tool(
    name="echo",
    description="Echo text back.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[ECHO_TOOL])


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name != "echo":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"unknown tool {params.name}")], is_error=True
        )
    text = str((params.arguments or {}).get("text", ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def build_server() -> Server[Any]:
    return Server("bench-echo", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


class HandshakeOnly:
    """Answers a 2026-07-28 request HTTP 400 (as a backend built before that version does): clients fall back to a
    2025-11-25 session."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            name == b"mcp-protocol-version" and value.startswith(b"2026") for name, value in scope["headers"]
        ):
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Unsupported protocol version"}}'
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP echo backend for benchmarks (low-level SDK server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", action="store_true", help="2025-11-25 only, a session per client")
    args = parser.parse_args()
    app: ASGIApp = build_server().streamable_http_app(
        stateless_http=not args.sessions, json_response=True, host=args.host
    )
    if args.sessions:
        app = HandshakeOnly(app)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on", access_log=False)


if __name__ == "__main__":
    main()

"""Many benchmark backends in one process: `--count` low-level SDK servers with `--tools` tools each, one per port
from `--base-port`, plus (with `--hung-port`) a server that accepts every request and never answers.

Run as `python -m bench.wide_backend --base-port P --count 20 --tools 50 [--hung-port H]`.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def tool_server(index: int, tools: int) -> Server[Any]:
    listed = types.ListToolsResult(
        tools=[
            types.Tool(
                name=f"tool_{j}",
                description=f"Tool {j} of backend {index}: echoes its text.",
                input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            )
            for j in range(tools)
        ]
    )

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listed

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server(f"bench-wide-{index}", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


def hung_app() -> Starlette:
    async def never(request: Request) -> Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return Starlette(routes=[Route("/mcp", never, methods=["GET", "POST", "DELETE"])])


async def serve_all(host: str, base_port: int, count: int, tools: int, hung_port: int | None) -> None:
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                tool_server(i, tools).streamable_http_app(stateless_http=True, json_response=True, host=host),
                host=host,
                port=base_port + i,
                log_level="warning",
                lifespan="on",
                access_log=False,
            )
        )
        for i in range(count)
    ]
    if hung_port is not None:
        servers.append(
            uvicorn.Server(uvicorn.Config(hung_app(), host=host, port=hung_port, log_level="warning", access_log=False))
        )
    async with anyio.create_task_group() as tg:
        for server in servers:
            tg.start_soon(server.serve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--tools", type=int, default=50)
    parser.add_argument("--hung-port", type=int)
    args = parser.parse_args()
    anyio.run(serve_all, args.host, args.base_port, args.count, args.tools, args.hung_port)


if __name__ == "__main__":
    main()

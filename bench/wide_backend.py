"""Many benchmark backends in one process: `--count` low-level SDK servers with `--tools` tools each, each on a port
of its own, plus (with `--hung`) a server that accepts every request and never answers.

Run as `python -m bench.wide_backend --ports-file F --count 20 --tools 50 [--hung]`. The ports are chosen by the
system (port 0), so they can never collide with another process's; once every server listens, their numbers are
written to F, one a line (the hung server's last).
"""

from __future__ import annotations

import argparse
import socket
from functools import partial
from pathlib import Path
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


async def serve_all(host: str, ports_file: Path, count: int, tools: int, hung: bool) -> None:
    apps: list[Any] = [
        tool_server(i, tools).streamable_http_app(stateless_http=True, json_response=True, host=host)
        for i in range(count)
    ]
    if hung:
        apps.append(hung_app())
    sockets = []
    for _ in apps:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sockets.append(sock)
    servers = [
        uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto", access_log=False)) for app in apps
    ]
    async with anyio.create_task_group() as tg:
        for server, sock in zip(servers, sockets, strict=True):
            tg.start_soon(partial(server.serve, sockets=[sock]))
        while not all(server.started for server in servers):  # noqa: ASYNC110 - uvicorn offers only this flag
            await anyio.sleep(0.01)
        written = anyio.Path(f"{ports_file}.part")
        await written.write_text("".join(f"{sock.getsockname()[1]}\n" for sock in sockets))
        await written.rename(ports_file)  # whole or not at all, for the harness that waits for it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports-file", type=Path, required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--tools", type=int, default=50)
    parser.add_argument("--hung", action="store_true")
    args = parser.parse_args()
    anyio.run(serve_all, args.host, args.ports_file, args.count, args.tools, args.hung)


if __name__ == "__main__":
    main()

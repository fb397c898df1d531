"""A fastmcp proxy in front of the echo backend, for comparison with virtual-mcp.

`--session per-call` is `create_proxy(url)` as documented (fastmcp's default: a fresh backend client, so a fresh
backend session, for every request, in the front connection's protocol era). `--session shared` hands
`create_proxy` an already-connected `fastmcp.Client`, which fastmcp reuses for every request (one backend session
for the life of the process; its era is the one that client negotiated, `mode="auto"`).

Run as `python -m bench.fastmcp_proxy --backend URL --port P --session per-call|shared`. Serves `/mcp` with
fastmcp's HTTP defaults (stateful sessions for 2025-11-25 clients, SSE responses), like the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from fastmcp import Client
from fastmcp.server import create_proxy


async def serve(backend: str, host: str, port: int, session: str) -> None:
    if session == "shared":
        client: Client = Client(backend)
        async with client:
            proxy = create_proxy(client, name="bench-proxy-shared")
            await proxy.run_http_async(show_banner=False, host=host, port=port, log_level="warning")
    else:
        proxy = create_proxy(backend, name="bench-proxy")
        await proxy.run_http_async(show_banner=False, host=host, port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description="fastmcp proxy to the benchmark's echo backend")
    parser.add_argument("--backend", required=True, help="backend MCP URL, e.g. http://127.0.0.1:9001/mcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--session", choices=["per-call", "shared"], default="per-call")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.backend, args.host, args.port, args.session))


if __name__ == "__main__":
    main()

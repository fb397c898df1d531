"""List and call tools through the gateway with fastmcp.Client: `python examples/client.py URL [TOKEN]`.

The token may also come from the VIRTUAL_MCP_TOKEN environment variable.
"""

from __future__ import annotations

import asyncio
import os
import sys

from fastmcp import Client


async def main(url: str, token: str | None) -> None:
    async with Client(url, auth=token) as client:
        tools = await client.list_tools()
        print(f"{len(tools)} tools at {url}:")
        for tool in tools:
            source = (tool.meta or {}).get("virtual-mcp/source", {})
            origin = f"  <- {source.get('server')}/{source.get('tool')}" if source else ""
            print(f"  {tool.name}{origin}")
        name = next((t.name for t in tools if t.name.endswith("list_repos")), None)
        if name:
            result = await client.call_tool(name, {})
            print(f"\n{name} -> {result.data if result.data is not None else result.content}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/mcp"
    asyncio.run(main(target, sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIRTUAL_MCP_TOKEN")))

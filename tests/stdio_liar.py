"""A stdio MCP server that answers the handshake and then writes garbage for every request (`python -m
tests.stdio_liar`): what a server with a stray print() on its protocol channel does."""

from __future__ import annotations

import json
import sys


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "liar"}}
            print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
        elif "id" in message:
            print("this is not json", flush=True)


if __name__ == "__main__":
    main()

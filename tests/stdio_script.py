"""What the hand-written stdio MCP servers of the tests share: one JSON-RPC message per line, and the answers to
the handshake and to `tools/list` (`basics`), so each server is only what it does differently."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, TextIO


def send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def text(request_id: Any, value: str) -> None:
    """A tool's answer: one text block."""
    send({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": value}]}})


def messages(lines: TextIO, name: str, tools: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The client's messages, but the handshake and `tools/list`, which are answered here (a 2025-11-25 server named
    `name` with `tools`)."""
    for line in lines:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            info = {"name": name, "version": "1"}
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": info}
            send({"jsonrpc": "2.0", "id": request_id, "result": result})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": list(tools)}})
        else:
            yield message

"""A stdio MCP server whose credential is its environment (`python -m tests.stdio_token_reader`): `whoami` answers
whose access token `GITHUB_TOKEN` holds (its JWT claims `sub` and `jti`, read unverified) and the process id;
`token` answers the token itself (which the gateway must never let through)."""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

from tests.stdio_script import messages, send, text

TOOLS = [
    {"name": "whoami", "description": "whose token this process holds", "inputSchema": {"type": "object"}},
    {"name": "token", "description": "the token itself", "inputSchema": {"type": "object"}},
]


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def main() -> None:
    token = os.environ.get("GITHUB_TOKEN", "")
    for message in messages(sys.stdin, "token-reader", TOOLS):
        method, request_id = message.get("method"), message.get("id")
        if method == "tools/call":
            if message["params"]["name"] == "whoami":
                seen = claims(token)
                text(request_id, json.dumps({"sub": seen.get("sub"), "jti": seen.get("jti"), "pid": os.getpid()}))
            else:
                text(request_id, token)
        elif request_id is not None:
            send({"jsonrpc": "2.0", "id": request_id, "result": {}})


if __name__ == "__main__":
    main()

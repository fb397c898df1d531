"""A stdio MCP server that asks its client a question after it has answered the call (`python -m
tests.stdio_late_asker`): `late` answers, then sends an elicitation/create nobody's call is waiting on; `told`
answers with what the gateway replied to that question (waiting for the reply if it has not come yet)."""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.stdio_script import messages, send, text

TOOLS = [
    {"name": "late", "description": "asks after answering", "inputSchema": {"type": "object"}},
    {"name": "told", "description": "what the late question got", "inputSchema": {"type": "object"}},
]


def main() -> None:
    reply: dict[str, Any] | None = None
    waiting: Any = None  # the id of a `told` call that came before the reply
    for message in messages(sys.stdin, "late-asker", TOOLS):
        method, request_id = message.get("method"), message.get("id")
        if method == "tools/call" and message["params"]["name"] == "late":
            schema = {"type": "object", "properties": {"name": {"type": "string"}}}
            params = {"message": "Too late?", "requestedSchema": schema}
            answered = {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": {"content": [{"type": "text", "text": "answered"}]},
            }
            late = {"jsonrpc": "2.0", "id": "late-1", "method": "elicitation/create", "params": params}
            # One write: the gateway reads the question right after the answer, before the caller's next call can
            # be under way (a call in flight would be taken for the one asking).
            sys.stdout.write(json.dumps(answered) + "\n" + json.dumps(late) + "\n")
            sys.stdout.flush()
        elif method == "tools/call":
            if reply is None:
                waiting = request_id
            else:
                text(request_id, json.dumps(reply))
        elif method is None and request_id == "late-1":
            reply = message
            if waiting is not None:
                text(waiting, json.dumps(reply))
                waiting = None
        elif request_id is not None:
            send({"jsonrpc": "2.0", "id": request_id, "result": {}})


if __name__ == "__main__":
    main()

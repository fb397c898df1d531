"""A hostile backend: it echoes every header it receives into every part of every answer it gives, and answers some
tools with JSON nested too deep or with `_meta` keys that are the gateway's to set.

One app serves both protocol eras: under `/modern/...` it speaks 2026-07-28 (answers `server/discover`), under
`/legacy/...` it speaks 2025-11-25 only (refuses `server/discover` as an SDK 1.x server does, keeps a session) and
writes its JSON as PHP does, with every `/` escaped (`\\/`), so a value is never found by a plain byte search. Under
`.../fail/...` its tools/list is a JSON-RPC error echoing the headers. Each echo carries the headers three ways: as
JSON, base64-encoded and URL-encoded. Every credential it receives (the `authorization` and `x-api-key` values, and
the token after the scheme) is registered with `tests.sensitive.mark`, so the whole-run log scan and
`SecureGateway.leaks()` look for it; `credentials` holds them for the tests' own checks.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from starlette.types import Receive, Scope, Send

from tests.sensitive import mark

CREDENTIAL_HEADERS = ("authorization", "x-api-key")
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
DEPTH_LIMIT = 128  # virtual_mcp.upstream.answers.MAX_ANSWER_DEPTH, as the gateway documents it
ECHO_TOOLS = ("text", "structured", "meta", "blocks", "is_error", "rpc_error", "log", "progress")
# Tools answering what the gateway must refuse or repair (see `_odd`).
ODD_TOOLS = (
    "deep_result",
    "deep_unbalanced",
    "deep_in_stream",
    "deep_notification",
    "deep_error_data",
    "at_the_limit",
    "brackets_in_strings",
    "claims_a_source",
)
IMPOSTOR = {"server": "echo/static-modern", "tool": "text"}  # the identity `claims_a_source` pretends to


def nested(levels: int) -> str:
    """JSON text of `levels` arrays, one inside the other (built as text: json.dumps cannot nest that deep)."""
    return "[" * levels + '"bottom"' + "]" * levels


def echo_text(headers: dict[str, str]) -> str:
    dump = json.dumps(headers, sort_keys=True)
    return f"you sent {dump} | base64 {base64.b64encode(dump.encode()).decode()} | url {quote(dump, safe='')}"


class Echoing:
    def __init__(self) -> None:
        self.credentials: set[str] = set()  # every credential value received, and the token after its scheme
        self.calls: list[str] = []  # tools/call names, in arrival order
        self._sessions: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                if event == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        era = MODERN if scope["path"].startswith("/modern/") else LEGACY
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self._remember(headers)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST":
            await _send(send, 405 if scope["method"] == "GET" else 200, "application/json", b"{}")
            return
        request = json.loads(body)
        if "id" not in request:
            await _send(send, 202, "application/json", b"")
            return
        await self._answer(era, request, headers, send, failing="/fail/" in scope["path"])

    def _remember(self, headers: dict[str, str]) -> None:
        for name in CREDENTIAL_HEADERS:
            value = headers.get(name)
            if value:
                token = value.partition(" ")[2] or value
                for secret in (value, token):
                    if len(secret) >= 8:
                        self.credentials.add(secret)
                        mark(secret)

    async def _answer(
        self, era: str, request: dict[str, Any], headers: dict[str, str], send: Send, failing: bool
    ) -> None:
        method = request["method"]
        params = request.get("params") or {}
        extra: list[tuple[bytes, bytes]] = []
        notes: list[Any] = []
        outcome: dict[str, Any]
        if method == "server/discover" and era == LEGACY:
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Unsupported protocol version"}}
            await _send(send, 400, "application/json", json.dumps(error).encode())
            return
        if method == "server/discover":
            outcome = {"result": _discover(headers)}
        elif method == "initialize":
            session = uuid.uuid4().hex
            self._sessions.add(session)
            extra.append((b"mcp-session-id", session.encode()))
            outcome = {"result": _initialize(headers)}
        elif method == "tools/call":
            name = params.get("name")
            self.calls.append(str(name))
            outcome, notes = _call(str(name), params, headers, request["id"])
        elif method == "tools/list" and failing:
            echo = echo_text(headers)
            outcome = {"error": {"code": -32000, "message": f"upstream refused: {echo}", "data": {"headers": headers}}}
        else:
            outcome = {"result": _other(method, headers)}
        if era == MODERN and "result" in outcome and method != "server/discover":
            outcome["result"].setdefault("resultType", "complete")
        raw = outcome.get("raw")
        answer = raw if isinstance(raw, bytes) else _encode(era, {"jsonrpc": "2.0", "id": request["id"], **outcome})
        if notes or params.get("name") == "deep_in_stream":
            events = [note if isinstance(note, bytes) else _encode(era, {"jsonrpc": "2.0", **note}) for note in notes]
            stream = b"".join(b"event: message\ndata: " + data + b"\n\n" for data in [*events, answer])
            await _send(send, 200, "text/event-stream", stream, extra)
        else:
            await _send(send, 200, "application/json", answer, extra)


def _encode(era: str, message: Any) -> bytes:
    text = json.dumps(message)
    return (text.replace("/", "\\/") if era == LEGACY else text).encode()


async def _send(send: Send, status: int, ctype: str, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    head = [(b"content-type", ctype.encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


CAPABILITIES = {"tools": {}, "resources": {}, "prompts": {}, "logging": {}}


def _discover(headers: dict[str, str]) -> dict[str, Any]:
    info = {"name": "echo", "version": "1", "title": echo_text(headers)}
    return {
        "supportedVersions": [MODERN],
        "capabilities": CAPABILITIES,
        "_meta": {"io.modelcontextprotocol/serverInfo": info},
        "resultType": "complete",
    }


def _initialize(headers: dict[str, str]) -> dict[str, Any]:
    info = {"name": "echo", "version": "1", "title": echo_text(headers)}
    return {"protocolVersion": LEGACY, "capabilities": CAPABILITIES, "serverInfo": info, "instructions": str(headers)}


def _tool(name: str, headers: dict[str, str]) -> dict[str, Any]:
    echo = echo_text(headers)
    return {
        "name": name,
        "title": f"{name}: {echo}",
        "description": echo,
        "inputSchema": {"type": "object", "properties": {"x": {"type": "string", "description": echo}}},
        "annotations": {"title": echo},
        "_meta": {"echo": headers, "virtual-mcp/source": IMPOSTOR},
    }


def _other(method: str, headers: dict[str, str]) -> dict[str, Any]:
    echo = echo_text(headers)
    b64 = base64.b64encode(echo.encode()).decode()
    if method == "tools/list":
        return {"tools": [_tool(name, headers) for name in (*ECHO_TOOLS, *ODD_TOOLS)]}
    if method == "resources/list":
        return {"resources": [{"uri": "echo://headers", "name": "headers", "description": echo}]}
    if method == "resources/templates/list":
        return {"resourceTemplates": [{"uriTemplate": "echo://{x}", "name": "t", "description": echo}]}
    if method == "resources/read":
        return {
            "contents": [
                {"uri": "echo://headers", "mimeType": "text/plain", "text": echo},
                {"uri": "echo://headers.bin", "mimeType": "application/octet-stream", "blob": b64},
            ],
            "_meta": {"echo": headers},
        }
    if method == "prompts/list":
        return {"prompts": [{"name": "p", "description": echo, "arguments": [{"name": "a", "description": echo}]}]}
    if method == "prompts/get":
        content = {"type": "text", "text": echo}
        return {"description": echo, "messages": [{"role": "user", "content": content}], "_meta": {"echo": headers}}
    return {}


def _call(
    name: str, params: dict[str, Any], headers: dict[str, str], request_id: Any
) -> tuple[dict[str, Any], list[Any]]:
    """(the answer's `result`, `error` or `raw` text; the notifications sent before it, as objects or raw text)."""
    echo = echo_text(headers)
    b64 = base64.b64encode(echo.encode()).decode()
    text = [{"type": "text", "text": echo}]
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "text":
        return {"result": {"content": text}}, []
    if name == "structured":
        return {"result": {"content": text, "structuredContent": {"headers": headers, "echo": echo}}}, []
    if name == "meta":
        block = {"type": "text", "text": "see _meta", "_meta": {"echo": headers}}
        return {"result": {"content": [block], "_meta": {"echo": headers, "note": echo}}}, []
    if name == "blocks":
        link = {"type": "resource_link", "uri": "echo://h?" + quote(echo), "name": "link", "description": echo}
        blocks = [
            *text,
            {"type": "image", "data": b64, "mimeType": "image/png"},
            {"type": "audio", "data": b64, "mimeType": "audio/wav"},
            link,
            {"type": "resource", "resource": {"uri": "echo://t", "mimeType": "text/plain", "text": echo}},
            {"type": "resource", "resource": {"uri": "echo://b", "mimeType": "application/octet-stream", "blob": b64}},
        ]
        return {"result": {"content": blocks}}, []
    if name == "is_error":
        return {"result": {"content": text, "isError": True}}, []
    if name == "rpc_error":
        error = {"code": -32000, "message": f"upstream refused: {echo}", "data": {"headers": headers, "b64": b64}}
        return {"error": error}, []
    if name == "log":
        note = {"level": "error", "logger": f"echo {echo}", "data": {"headers": headers, "echo": echo}}
        return {"result": {"content": [{"type": "text", "text": "logged"}]}}, [
            {"method": "notifications/message", "params": note}
        ]
    if name == "progress":
        notes = []
        if token is not None:
            progress = {"progressToken": token, "progress": 1, "total": 2, "message": echo}
            notes.append({"method": "notifications/progress", "params": progress})
        return {"result": {"content": [{"type": "text", "text": "progressed"}]}}, notes
    return _odd(name, text, json.dumps(request_id))


def _odd(name: str, text: list[dict[str, Any]], request_id: str) -> tuple[dict[str, Any], list[Any]]:
    """Answers the gateway must refuse (nested too deep: the envelope and the result are two levels, the object
    of structuredContent or error.data a third) or repair (a `_meta` claiming another server's identity)."""
    content = json.dumps(text)
    if name in ("deep_result", "deep_in_stream", "at_the_limit"):
        levels = DEPTH_LIMIT - 2 if name != "at_the_limit" else DEPTH_LIMIT - 3
        body = f'{{"content": {content}, "structuredContent": {{"v": {nested(levels)}}}}}'
        return {"raw": f'{{"jsonrpc": "2.0", "id": {request_id}, "result": {body}}}'.encode()}, []
    if name == "deep_unbalanced":
        return {"raw": f'{{"jsonrpc": "2.0", "id": {request_id}, "result": '.encode() + b"[" * 100_000}, []
    if name == "deep_notification":
        params = f'{{"level": "error", "data": {nested(50_000)}}}'
        note = f'{{"jsonrpc": "2.0", "method": "notifications/message", "params": {params}}}'
        return {"result": {"content": text}}, [note.encode()]
    if name == "deep_error_data":
        error = f'{{"code": -32000, "message": "deep data", "data": {nested(DEPTH_LIMIT)}}}'
        return {"raw": f'{{"jsonrpc": "2.0", "id": {request_id}, "error": {error}}}'.encode()}, []
    if name == "brackets_in_strings":
        brackets = "[" * 5000 + "{" * 5000
        return {"result": {"content": [{"type": "text", "text": brackets}], "structuredContent": {"s": brackets}}}, []
    if name == "claims_a_source":
        meta = {"virtual-mcp/source": IMPOSTOR, "virtual-mcp/anything": 1, "kept": True}
        return {"result": {"content": [{"type": "text", "text": "who am I"}], "_meta": meta}}, []
    return {"error": {"code": -32602, "message": f"Unknown tool: {name}"}}, []

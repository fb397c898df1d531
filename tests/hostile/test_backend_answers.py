"""Hostile and faulty backends: what each lie costs, and who hears about it.

One lying backend (`tests/hostile/liar.py`, a raw socket: every byte is the scenario's) serves a scenario per path;
each is a server of its own behind one gateway. Each case checks the precise answer the caller gets (a list with the
bad entries left out, or the JSON-RPC error naming what was wrong), and then that nothing else suffered: two other
principals are served by a well-behaved backend, the call was audited, and (at the end) no request the gateway sent
to any backend carried a cookie one of them set.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.server.lowlevel.server import Server

from tests.hostile.liar import (
    KEPT,
    OK_RESULT,
    Handler,
    Liar,
    Reply,
    Scenario,
    Writer,
    answer,
    chunked,
    closing,
    drip,
    endless,
    event,
    hang,
    http,
    lying,
    rpc,
    sse,
    tcp_listener,
)
from tests.security_support import SecureGateway, secure_gateway
from tests.support import serve
from virtual_mcp.config.settings import Limits
from virtual_mcp.types import PrincipalKind

MODERN = "2026-07-28"
LIMIT = 64 * 1024
LIMITS = Limits(
    max_upstream_response_bytes=LIMIT,
    max_backend_list_entries=50,
    requests_per_second_per_principal=100_000,
    request_burst_per_principal=100_000,
)
CALL_TIMEOUT = 1.5
TOO_LARGE = f"its answer is larger than limits.max_upstream_response_bytes ({LIMIT} bytes)"
LINE_TOO_LARGE = f"its event-stream line is larger than limits.max_upstream_response_bytes ({LIMIT} bytes)"
EVENT_TOO_LARGE = f"its event-stream event is larger than limits.max_upstream_response_bytes ({LIMIT} bytes)"
TOO_DEEP = "the answer is nested deeper than 128 levels (the gateway's limit)"
NOT_JSON_RPC = "HTTP 200 with a body that is not JSON-RPC"
USERS = {"alice": "alice@northwind.example", "bob": "bob@northwind.example", "carol": "carol@northwind.example"}
SCHEMA = {"type": "object", "properties": {}}


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"d": value}
    return value


def tools(*entries: Any) -> Handler:
    """tools/list answering the valid `kept` and `entries`."""
    return lambda m: rpc(m, {"tools": [KEPT, *entries]})


def tool(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "inputSchema": SCHEMA, **fields}


def paged(pages: list[list[Any]], cursors: list[Any]) -> Handler:
    """tools/list in pages: the first without a cursor, page i+1 for the cursor `str(i)`; `cursors[i]` is what page
    i gives as nextCursor."""

    def handler(message: dict[str, Any]) -> bytes:
        cursor = (message.get("params") or {}).get("cursor")
        index = int(cursor) if cursor is not None else 0
        result: dict[str, Any] = {"tools": pages[min(index, len(pages) - 1)]}
        if cursors[min(index, len(cursors) - 1)] is not None:
            result["nextCursor"] = cursors[min(index, len(cursors) - 1)]
        return rpc(message, result)

    return handler


def endless_pages(message: dict[str, Any]) -> bytes:
    cursor = int((message.get("params") or {}).get("cursor") or 0)
    return rpc(message, {"tools": [tool(f"page{cursor}")], "nextCursor": str(cursor + 1)})


# -- tool lists: the bad entries are left out, the valid ones served -------------------------------------------------
# name -> (tools/list handler, the names listed on the server's own endpoint, entries left out (the metric))
TOOL_LISTS: dict[str, tuple[Handler, set[str], int]] = {
    "l-no-input-schema": (tools({"name": "bad"}), {"kept"}, 1),
    "l-schema-text": (tools({"name": "bad", "inputSchema": "object"}), {"kept"}, 1),
    "l-schema-list": (tools({"name": "bad", "inputSchema": [1]}), {"kept"}, 1),
    "l-schema-string-type": (tools(tool("bad", inputSchema={"type": "string"})), {"kept"}, 1),
    "l-schema-no-type": (tools(tool("bad", inputSchema={})), {"kept"}, 1),
    "l-description-number": (tools(tool("bad", description=5)), {"kept"}, 1),
    "l-meta-list": (tools(tool("bad", _meta=[1])), {"kept"}, 1),
    "l-meta-text": (tools(tool("bad", _meta="x")), {"kept"}, 1),
    "l-name-number": (tools({"name": 5, "inputSchema": SCHEMA}), {"kept"}, 1),
    "l-name-missing": (tools({"inputSchema": SCHEMA}), {"kept"}, 1),
    "l-name-null": (tools({"name": None, "inputSchema": SCHEMA}), {"kept"}, 1),
    "l-name-empty": (tools(tool("")), {"kept"}, 1),
    "l-title-number": (tools(tool("bad", title=5)), {"kept"}, 1),
    "l-annotations-text": (tools(tool("bad", annotations="x")), {"kept"}, 1),
    "l-annotation-hint-list": (tools(tool("bad", annotations={"readOnlyHint": [1]})), {"kept"}, 1),
    "l-icons-text": (tools(tool("bad", icons="x")), {"kept"}, 1),
    "l-output-schema-number": (tools(tool("bad", outputSchema=5)), {"kept"}, 1),
    "l-execution-number": (tools(tool("bad", execution=5)), {"kept"}, 1),
    "l-entry-number": (tools(5), {"kept"}, 1),
    "l-entry-text": (tools("bad"), {"kept"}, 1),
    "l-entry-null": (tools(None), {"kept"}, 1),
    "l-entry-list": (tools([KEPT]), {"kept"}, 1),
    "l-every-flaw": (tools({"name": "bad"}, tool("b2", description=5), tool("b3", _meta=[1]), 7), {"kept"}, 4),
    "l-duplicate-name": (tools(dict(KEPT, description="an impostor")), {"kept"}, 1),
    "l-duplicate-across-pages": (paged([[KEPT], [dict(KEPT, description="again")]], ["1", None]), {"kept"}, 1),
    "l-too-many": (tools(*(tool(f"t{i}") for i in range(60))), {"kept", *(f"t{i}" for i in range(49))}, 11),
    "l-too-large-over-pages": (
        paged([[tool(f"big{i}", description="x" * 20_000)] for i in range(4)], ["1", "2", "3", None]),
        {"big0", "big1", "big2"},
        1,
    ),
    "l-cursor-number": (paged([[KEPT], [tool("second")]], [5]), {"kept"}, 0),
    # A backend whose list as a whole is unusable is left out (the endpoint lists nothing; calls say why).
    "l-cursor-loop": (paged([[KEPT], [tool("second")]], ["1", "1"]), set(), 0),
    "l-endless-pages": (endless_pages, {f"page{i}" for i in range(50)}, 1),  # stops at the list's bound
    "l-tools-not-array": (lambda m: rpc(m, {"tools": "none of your business"}), set(), 0),
    "l-result-text": (lambda m: rpc(m, "tools"), set(), 0),
    "l-deep-schema": (tools(tool("bad", inputSchema={"type": "object", "properties": deep(200)})), set(), 0),
    "l-huge-list": (tools(*(tool(f"t{i}", description="x" * 2000) for i in range(40))), set(), 0),
}

RES_URI = "liar://kept"
RES = {"uri": RES_URI, "name": "kept"}
TEMPLATE = {"uriTemplate": "liar://{x}", "name": "kept"}
PROMPT = {"name": "kept"}

# -- other lists on a server's own endpoint: method, handler, the identifiers listed -----------------------------
OTHER_LISTS: dict[str, tuple[str, Handler, set[str]]] = {
    "r-no-uri": ("resources/list", lambda m: rpc(m, {"resources": [{"name": "x"}, RES]}), {"liar://kept"}),
    "r-uri-number": ("resources/list", lambda m: rpc(m, {"resources": [{"uri": 5, "name": "x"}, RES]}), {RES_URI}),
    "r-name-missing": ("resources/list", lambda m: rpc(m, {"resources": [{"uri": "liar://x"}, RES]}), {RES_URI}),
    "r-duplicate-uri": ("resources/list", lambda m: rpc(m, {"resources": [RES, dict(RES, name="again")]}), {RES_URI}),
    "r-entry-text": ("resources/list", lambda m: rpc(m, {"resources": ["x", RES]}), {RES_URI}),
    "t-no-template": (
        "resources/templates/list",
        lambda m: rpc(m, {"resourceTemplates": [{"name": "x"}, TEMPLATE]}),
        {"liar://{x}"},
    ),
    "t-name-number": (
        "resources/templates/list",
        lambda m: rpc(m, {"resourceTemplates": [{"uriTemplate": "a://{b}", "name": 5}, TEMPLATE]}),
        {"liar://{x}"},
    ),
    "p-arguments-text": (
        "prompts/list",
        lambda m: rpc(m, {"prompts": [{"name": "p", "arguments": "x"}, PROMPT]}),
        {"kept"},
    ),
    "p-name-missing": ("prompts/list", lambda m: rpc(m, {"prompts": [{"description": "x"}, PROMPT]}), {"kept"}),
    "p-duplicate-name": (
        "prompts/list",
        lambda m: rpc(m, {"prompts": [PROMPT, dict(PROMPT, description="b")]}),
        {"kept"},
    ),
}

# -- tools/call answers: the caller gets this error (or, for a harmless oddity, the result `ok`) ------------------
ScenarioSpec = tuple[Scenario, int | None, str]


def on_call(reply: Callable[[dict[str, Any]], Reply], modern: bool = False) -> Scenario:
    return Scenario({"tools/call": reply}, modern)


def on(method: str, reply: Callable[[dict[str, Any]], Reply]) -> Scenario:
    return Scenario({method: reply})


def huge_chunk(ctype: str, prefix: bytes) -> Writer:
    """One chunk claiming 16 MiB, whose bytes then keep coming."""
    head = f"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: {ctype}\r\n\r\n".encode()
    return endless(head + b"1000000\r\n" + prefix, b"x" * 16384)


def claims_ten_gigabytes(message: dict[str, Any]) -> Writer:
    async def write(writer: Any) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n{")
        await writer.drain()
        await hang()(writer)
        return False

    return write


def stall(message: dict[str, Any]) -> Writer:
    async def write(writer: Any) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"jsonrpc"')
        await writer.drain()
        await hang()(writer)
        return False

    return write


def ok_sse(message: dict[str, Any], *before: bytes) -> bytes:
    return sse(*before, event(answer(message, OK_RESULT)))


# A call that first leaves an idle connection to the liar in the pool (the next call takes it): a connection that
# closes before answering is then a pooled one the backend dropped, and a tools/call is not sent again.
WARM = {"c-hangup"}
BACKEND_SAYS = {"c-null-id-error", "c-502-rpc-error", "c-error-code-text"}  # the backend's own errors, passed on
RPC_ERROR = {"code": -32050, "message": "overloaded, try later"}
CALLS: dict[str, ScenarioSpec] = {
    # Not JSON-RPC, or not the answer asked for.
    "c-html": (
        on_call(lambda m: http(200, b"<html>It works!</html>", "text/html; charset=utf-8")),
        -32012,
        f"{NOT_JSON_RPC} (text/html; charset=utf-8)",
    ),
    "c-not-rpc": (on_call(lambda m: http(200, b'{"hello": "world"}')), -32012, "HTTP 200 without a JSON-RPC response"),
    "c-wrong-id": (
        on_call(lambda m: rpc(dict(m, id=m["id"] + 1000), OK_RESULT)),
        -32012,
        "HTTP 200 with the answer to another request",
    ),
    "c-string-id": (
        on_call(lambda m: rpc(dict(m, id=str(m["id"])), OK_RESULT)),
        -32012,
        "HTTP 200 with the answer to another request",
    ),
    "c-result-text": (on_call(lambda m: rpc(m, "ok")), -32012, "JSON-RPC result is not an object"),
    "c-result-list": (on_call(lambda m: rpc(m, [OK_RESULT])), -32012, "JSON-RPC result is not an object"),
    "c-error-number": (on_call(lambda m: rpc(m, error=5)), -32012, "malformed JSON-RPC error"),
    "c-empty": (on_call(lambda m: http(200, b"")), -32012, f"{NOT_JSON_RPC} (application/json)"),
    "c-bad-utf8": (on_call(lambda m: http(200, b'\xff\xfe{"jsonrpc"')), -32012, f"{NOT_JSON_RPC} (application/json)"),
    "c-no-type": (on_call(lambda m: http(200, b"garbage", None)), -32012, f"{NOT_JSON_RPC} (no type)"),
    "c-500-html": (
        on_call(lambda m: http(500, b"<h1>oops</h1>", "text/html")),
        -32012,
        "HTTP 500 with a body that is not JSON-RPC (text/html)",
    ),
    "c-gzip": (
        on_call(
            lambda m: http(
                200,
                gzip.compress(json.dumps(answer(m, OK_RESULT)).encode()),
                "application/json",
                "content-encoding: gzip",
            )
        ),
        -32012,
        "answered with a Content-Encoding the gateway did not ask for",
    ),
    # Too large: refused while it streams in, however it is framed.
    "c-huge-length": (on_call(lambda m: http(200, b" " * (LIMIT + 1))), -32012, TOO_LARGE),
    "c-huge-chunked": (on_call(lambda m: chunked(b" " * 40_000, b" " * 40_000)), -32012, TOO_LARGE),
    "c-endless-chunked": (
        on_call(lambda m: endless(chunked(b"[", end=False), b" " * 16384, chunk=True)),
        -32012,
        TOO_LARGE,
    ),
    "c-endless-close": (
        on_call(lambda m: endless(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n", b" " * 16384)),
        -32012,
        TOO_LARGE,
    ),
    "c-claims-10gb": (on_call(claims_ten_gigabytes), -32012, TOO_LARGE),
    "c-one-huge-chunk": (on_call(lambda m: huge_chunk("application/json", b"[")), -32012, TOO_LARGE),
    "c-huge-result": (
        on_call(lambda m: rpc(m, {"content": [{"type": "text", "text": "x" * LIMIT}]})),
        -32012,
        TOO_LARGE,
    ),
    # Event streams: each line and each event bounded, whatever the chunks.
    "s-long-line": (on_call(lambda m: sse(b"data: " + b"x" * (LIMIT + 10) + b"\n\n")), -32012, LINE_TOO_LARGE),
    "s-endless-line": (
        on_call(lambda m: endless(chunked(b"data: ", ctype="text/event-stream", end=False), b"x" * 16384, chunk=True)),
        -32012,
        LINE_TOO_LARGE,
    ),
    "s-one-huge-chunk": (on_call(lambda m: huge_chunk("text/event-stream", b"data: ")), -32012, LINE_TOO_LARGE),
    "s-many-data-lines": (
        on_call(lambda m: sse(b"".join(b"data: " + b"x" * 4096 + b"\n" for _ in range(20)))),
        -32012,
        EVENT_TOO_LARGE,
    ),
    "s-bad-json": (on_call(lambda m: sse(b"data: {this is not json\n\n")), -32012, "SSE event carried invalid JSON"),
    "s-no-answer": (
        on_call(
            lambda m: sse(
                event(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/message",
                        "params": {"level": "info", "data": "working"},
                    }
                )
            )
        ),
        -32012,
        "response stream ended without an answer",
    ),
    "s-wrong-id": (
        on_call(lambda m: sse(event(answer(dict(m, id=-1), OK_RESULT)))),
        -32012,
        "response stream ended without an answer",
    ),
    "s-comments-only": (
        on_call(lambda m: sse(b": ping\n\n", b": ping\n\n")),
        -32012,
        "response stream ended without an answer",
    ),
    "s-other-event": (
        on_call(lambda m: sse(event(answer(m, OK_RESULT), name="other"))),
        -32012,
        "response stream ended without an answer",
    ),
    "s-deep": (
        on_call(lambda m: sse(event(answer(m, {"content": [], "structuredContent": deep(200)})))),
        -32012,
        TOO_DEEP,
    ),
    "s-server-request": (
        on_call(
            lambda m: ok_sse(
                m, event({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage", "params": {}})
            )
        ),
        None,
        "ok",
    ),
    "s-crlf": (on_call(lambda m: sse(f"data: {json.dumps(answer(m, OK_RESULT))}\r\n\r\n".encode())), None, "ok"),
    "s-json-type-stream": (
        on_call(lambda m: sse(event(answer(m, OK_RESULT)), ctype="application/json")),
        -32012,
        f"{NOT_JSON_RPC} (application/json)",
    ),
    # Deep JSON: refused before it is parsed.
    "c-deep-200": (on_call(lambda m: rpc(m, {"content": [], "structuredContent": deep(200)})), -32012, TOO_DEEP),
    "c-deep-5000": (
        on_call(
            lambda m: http(
                200, b'{"jsonrpc": "2.0", "id": %d, "result": ' % m["id"] + b'{"d": ' * 5000 + b"1" + b"}" * 5001
            )
        ),
        -32012,
        TOO_DEEP,
    ),
    "c-deep-arrays": (on_call(lambda m: http(200, b"[" * 10_000 + b"]" * 10_000)), -32012, TOO_DEEP),
    # The backend's own JSON-RPC errors are the backend's to tell.
    "c-null-id-error": (on_call(lambda m: rpc(dict(m, id=None), error=RPC_ERROR)), -32050, "overloaded, try later"),
    "c-502-rpc-error": (
        on_call(lambda m: http(502, json.dumps(answer(m, error=RPC_ERROR)).encode())),
        -32050,
        "overloaded, try later",
    ),
    "c-error-code-text": (on_call(lambda m: rpc(m, error={"code": "E1", "message": "boom"})), -32603, "boom"),
    # Broken framing: the connection failed (-32010), and it is not reused.
    "c-truncated-chunked": (
        on_call(lambda m: closing(chunked(b"", end=False) + b"100\r\n" + b"x" * 10)),
        -32010,
        "connection failed during tools/call: the connection closed before the answer was complete",
    ),
    "c-short-body": (
        on_call(lambda m: closing(http(200, b"x" * 1000)[:-990])),
        -32010,
        "connection failed during tools/call: the connection closed before the answer was complete",
    ),
    "c-bad-chunk-size": (
        on_call(lambda m: closing(chunked(b"", end=False) + b"zz\r\n")),
        -32010,
        "connection failed during tools/call: malformed or truncated answer: ValueError",
    ),
    "c-bad-chunk-end": (
        on_call(lambda m: closing(chunked(b"", end=False) + b"2\r\n{}XX")),
        -32010,
        "connection failed during tools/call: malformed chunked answer",
    ),
    "c-huge-head": (
        on_call(lambda m: closing(b"HTTP/1.1 200 OK\r\nx-filler: " + b"a" * 70_000 + b"\r\n\r\n")),
        -32010,
        "connection failed during tools/call: the answer's head is too large",
    ),
    "c-not-http": (
        on_call(lambda m: closing(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")),
        -32010,
        "connection failed during tools/call: the answer is not HTTP/1.x",
    ),
    "c-hangup": (on_call(lambda m: closing(b"")), -32010, "connection dropped during tools/call"),
    "c-session-gone": (
        on_call(
            lambda m: http(404, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}')
        ),
        -32010,
        "session expired again right after reconnecting",
    ),
    # Too slow: the call's deadline ends it, however the bytes trickle.
    "c-drip": (
        on_call(lambda m: drip(rpc(m, OK_RESULT), 0.05)),
        -32011,
        f"no answer to tools/call within {CALL_TIMEOUT:g}s",
    ),
    "c-stall": (on_call(stall), -32011, f"no answer to tools/call within {CALL_TIMEOUT:g}s"),
    "c-hang": (on_call(lambda m: hang()), -32011, f"no answer to tools/call within {CALL_TIMEOUT:g}s"),
    # Harmless oddities: served.
    "c-text-plain-rpc": (
        on_call(lambda m: http(200, json.dumps(answer(m, OK_RESULT)).encode(), "text/plain")),
        None,
        "ok",
    ),
    "c-set-cookie": (
        on_call(lambda m: rpc(m, OK_RESULT).replace(b"\r\n\r\n", b"\r\nset-cookie: sid=one-caller\r\n\r\n", 1)),
        None,
        "ok",
    ),
    "c-trailers": (
        on_call(lambda m: chunked(json.dumps(answer(m, OK_RESULT)).encode(), end=False) + b"0\r\nx-trailer: 1\r\n\r\n"),
        None,
        "ok",
    ),
    # The same lies from a 2026-07-28 (sessionless) backend.
    "m-html": (
        on_call(lambda m: http(200, b"<html></html>", "text/html"), modern=True),
        -32012,
        f"{NOT_JSON_RPC} (text/html)",
    ),
    "m-huge": (on_call(lambda m: http(200, b" " * (LIMIT + 1)), modern=True), -32012, TOO_LARGE),
    "m-endless-sse": (
        on_call(
            lambda m: endless(chunked(b"data: ", ctype="text/event-stream", end=False), b"x" * 16384, chunk=True),
            modern=True,
        ),
        -32012,
        LINE_TOO_LARGE,
    ),
    "m-deep": (on_call(lambda m: rpc(m, deep(300)), modern=True), -32012, TOO_DEEP),
    "m-wrong-id": (
        on_call(lambda m: rpc(dict(m, id=m["id"] + 1), OK_RESULT), modern=True),
        -32012,
        "HTTP 200 with the answer to another request",
    ),
    "m-set-cookie": (
        on_call(lambda m: rpc(m, OK_RESULT).replace(b"\r\n\r\n", b"\r\nset-cookie: m=1\r\n\r\n", 1), modern=True),
        None,
        "ok",
    ),
    # Lies while the gateway opens the backend's session (initialize and server/discover, on the other client).
    "i-html": (
        on("initialize", lambda m: http(200, b"<html></html>", "text/html")),
        -32012,
        f"{NOT_JSON_RPC} (text/html)",
    ),
    "i-huge": (on("initialize", lambda m: http(200, b" " * (LIMIT + 1))), -32012, TOO_LARGE),
    "i-endless": (
        on("initialize", lambda m: endless(chunked(b"{", end=False), b" " * 16384, chunk=True)),
        -32012,
        TOO_LARGE,
    ),
    "i-deep": (on("initialize", lambda m: rpc(m, deep(300))), -32012, TOO_DEEP),
    "i-wrong-id": (
        on("initialize", lambda m: rpc(dict(m, id=99), {"protocolVersion": "2025-11-25"})),
        -32012,
        "HTTP 200 with the answer to another request",
    ),
    "i-no-version": (
        on("initialize", lambda m: rpc(m, {"capabilities": {}})),
        -32012,
        "initialize result has no usable protocolVersion",
    ),
    "i-modern-version": (
        on("initialize", lambda m: rpc(m, {"protocolVersion": MODERN})),
        -32012,
        "initialize result has no usable protocolVersion",
    ),
    "i-refused": (on("initialize", lambda m: http(500, b"no")), -32010, "initialize refused with HTTP 500"),
    "i-set-cookie": (
        on(
            "initialize",
            lambda m: rpc(m, {"protocolVersion": "2025-11-25", "capabilities": {}}).replace(
                b"\r\n\r\n", b"\r\nset-cookie: init=1\r\nmcp-session-id: s1\r\n\r\n", 1
            ),
        ),
        None,
        "ok",
    ),
    "d-endless": (
        on("server/discover", lambda m: endless(chunked(b"{", end=False), b" " * 16384, chunk=True)),
        -32012,
        TOO_LARGE,
    ),
    "d-deep": (on("server/discover", lambda m: rpc(m, deep(300))), None, "ok"),  # not 2026-07-28: initialize works
    "d-html": (on("server/discover", lambda m: http(200, b"<html></html>", "text/html")), None, "ok"),
}

CONFIG_HEAD = "name: lab\ntype: provider-account/mcp-server-group\nintegrations:\n"
ENTRY = "  - name: {name}\n    type: integration/mcp-server/remote\n    url: {url}\n    authorized_subjects: [team:p]\n"


def scenarios() -> dict[str, Scenario]:
    found = {name: Scenario({"tools/list": handler}) for name, (handler, _, _) in TOOL_LISTS.items()}
    found.update({name: Scenario({method: handler}) for name, (method, handler, _) in OTHER_LISTS.items()})
    found.update({name: spec[0] for name, spec in CALLS.items()})
    found["warm"] = Scenario()  # well-behaved
    return found


@dataclass
class Lab:
    gw: SecureGateway
    liar: Liar
    http: httpx.AsyncClient
    tokens: dict[str, str]
    ids: int = 0

    async def rpc(self, path: str, method: str, params: dict[str, Any], user: str = "alice") -> dict[str, Any]:
        """One 2026-07-28 request through the gateway's front door; the JSON-RPC message it answers."""
        self.ids += 1
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
        body = {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": {**params, "_meta": meta}}
        headers = {
            "authorization": f"Bearer {self.tokens[user]}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN,
            "mcp-method": method,
        }
        if "name" in params:
            headers["mcp-name"] = params["name"]
        response = await self.http.post(f"{self.gw.url}{path}", json=body, headers=headers)
        assert response.status_code == 200, (response.status_code, response.text[:300])
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and '"id"' in line)
        message: dict[str, Any] = json.loads(text)
        assert message["id"] == self.ids
        return message

    async def listed(self, name: str, method: str = "tools/list", key: str = "tools", ident: str = "name") -> set[str]:
        message = await self.rpc(f"/mcp-server/lab/{name}/server", method, {})
        return {entry[ident] for entry in message["result"][key]}

    async def others_served(self) -> None:
        """Two other principals are served by a well-behaved backend, called and listed."""
        for user in ("bob", "carol"):
            message = await self.rpc(
                "/mcp-server/lab/good/server", "tools/call", {"name": "echo", "arguments": {"text": user}}, user
            )
            assert message["result"]["content"] == [{"type": "text", "text": user}]
        listed = await self.rpc("/mcp", "tools/list", {}, "bob")
        assert "lab__good__echo" in {t["name"] for t in listed["result"]["tools"]}

    def left_out(self, name: str, kind: str = "tool") -> float:
        value = self.gw.metrics.registry.get_sample_value(
            "vmcp_upstream_invalid_entries_total", {"server": f"lab/{name}", "kind": kind}
        )
        return value or 0.0


def echo_server() -> Server[Any]:
    """The well-behaved backend: the SDK's low-level server with one `echo` tool (quick, so the corpus is)."""
    echo = types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}})

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[echo])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("good", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    root: Path = tmp_path_factory.mktemp("liars")
    good_app = echo_server().streamable_http_app(stateless_http=True, json_response=True)
    async with lying(scenarios()) as liar, serve(good_app, tcp_listener()) as good:
        config = root / "servers.d"
        config.mkdir()
        entries = [ENTRY.format(name="good", url=f"{good.url}/mcp")]
        entries += [ENTRY.format(name=name, url=f"{liar.url}/{name}") for name in liar.scenarios]
        (config / "lab.yaml").write_text(CONFIG_HEAD + "".join(entries))
        members = ", ".join(USERS.values())
        (config / "ids.yaml").write_text(f"type: identities\nteams:\n  - name: p\n    members: [{members}]\n")
        async with (
            secure_gateway(
                config, root / "data", sock=tcp_listener(), limits=LIMITS, call_timeout_seconds=CALL_TIMEOUT
            ) as gw,
            httpx.AsyncClient(timeout=30) as client,
        ):
            tokens = {short: await gw.token(PrincipalKind.USER, user) for short, user in USERS.items()}
            yield Lab(gw, liar, client, tokens)


@pytest.mark.parametrize("name", list(TOOL_LISTS))
async def test_a_bad_tool_list_costs_only_its_bad_entries(lab: Lab, name: str) -> None:
    _, expected, left_out = TOOL_LISTS[name]
    assert await lab.listed(name) == expected
    assert lab.left_out(name) == left_out
    aggregate = await lab.rpc("/mcp", "tools/list", {}, "bob")
    assert {t["name"] for t in aggregate["result"]["tools"] if t["name"].startswith(f"lab__{name}__")} == {
        f"lab__{name}__{tool}" for tool in expected
    }
    await lab.others_served()


@pytest.mark.parametrize("name", list(OTHER_LISTS))
async def test_a_bad_resource_or_prompt_list_costs_only_its_bad_entries(lab: Lab, name: str) -> None:
    method, _, expected = OTHER_LISTS[name]
    key, ident = {
        "resources/list": ("resources", "uri"),
        "resources/templates/list": ("resourceTemplates", "uriTemplate"),
        "prompts/list": ("prompts", "name"),
    }[method]
    assert await lab.listed(name, method, key, ident) == expected
    assert (
        lab.left_out(name, {"resources": "resource", "resourceTemplates": "resource_template"}.get(key, "prompt")) == 1
    )
    await lab.others_served()


async def test_a_list_that_is_not_a_list_is_a_precise_error(lab: Lab) -> None:
    lab.liar.scenarios["r-no-uri"].handlers["resources/list"] = lambda m: rpc(m, {"resources": "none"})
    message = await lab.rpc("/mcp-server/lab/r-no-uri/server", "resources/list", {})
    assert message["error"]["code"] == -32012
    assert message["error"]["message"] == "backend 'lab/r-no-uri': resources/list result has no resources array"
    await lab.others_served()


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_lying_answer_reaches_its_caller_as_a_precise_error(lab: Lab, name: str) -> None:
    _, code, expected = CALLS[name]
    if name in WARM:
        await lab.rpc("/mcp-server/lab/warm/server", "tools/call", {"name": "kept", "arguments": {}})
    message = await lab.rpc(f"/mcp-server/lab/{name}/server", "tools/call", {"name": "kept", "arguments": {}})
    if code is None:
        assert message["result"]["content"] == [{"type": "text", "text": expected}]
    else:
        assert message["error"]["code"] == code, message
        assert message["error"]["message"] == (
            expected if name in BACKEND_SAYS else f"backend 'lab/{name}': {expected}"
        )
    audited = await lab.gw.audit(server=f"lab/{name}", tool="kept")
    assert len(audited) == 1 and audited[0].outcome == ("allowed" if code is None else "failed")
    await lab.others_served()


async def test_no_request_ever_carried_a_cookie_a_backend_set(lab: Lab) -> None:
    for name in ("c-set-cookie", "m-set-cookie", "i-set-cookie"):
        message = await lab.rpc(f"/mcp-server/lab/{name}/server", "tools/call", {"name": "kept", "arguments": {}})
        assert message["result"]["content"] == [{"type": "text", "text": "ok"}]
    assert len(lab.liar.seen) > 100
    assert lab.liar.cookies == []

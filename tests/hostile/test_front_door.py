"""Hostile input at the front door, as exact bytes on a real socket: repeated, oversized, malformed and
control-character headers, every form of Host, Origin and Authorization, credentials in the query string, strange
paths and methods, content types, and bodies that are not JSON, not JSON-RPC, or JSON-RPC with a bad id, method or
params, in both protocol eras. Each gets its precise status and JSON-RPC error (or, for what the HTTP parser refuses
before the gateway sees it, uvicorn's plain 400), and after each one another caller is served normally and its
call is audited (nothing is lost).

One gateway with the production security planes (tokens, JWTs, audit) and one backend serve the whole module."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.hostile.front_support import (
    AGGREGATE,
    LEGACY,
    MODERN,
    OVERRIDABLE,
    SINGLE,
    FrontLab,
    front_lab,
    legacy_headers,
    modern_call,
    modern_headers,
)
from virtual_mcp.logs import line_handler

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
UNAUTHORIZED, FORBIDDEN = -32001, -32003
MISMATCH = -32020  # the SDK: an Mcp-* routing header disagrees with the body
UNSUPPORTED_VERSION = -32022

Headers = list[tuple[str, str]]
Build = Callable[[FrontLab], bytes]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FrontLab]:
    async with front_lab(tmp_path_factory.mktemp("front")) as front:
        yield front


def body_of(message: Any) -> bytes:
    return json.dumps(message).encode()


GOOD = body_of(modern_call())
LEGACY_CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "x"}},
}


def without(headers: Headers, *names: str) -> Headers:
    lowered = {n.lower() for n in names}
    return [h for h in headers if h[0].lower() not in lowered]


def modern(
    *,
    drop: tuple[str, ...] = (),
    add: Headers | None = None,
    body: bytes = GOOD,
    path: str = SINGLE,
    method: str = "POST",
    bearer: str = "{alice}",
    name: str = "echo",
) -> Build:
    """A 2026-07-28 tools/call of echo as alice, with `drop` headers left out and `add` headers added."""
    return lambda lab: lab.request(method, path, without(modern_headers(bearer, name), *drop) + (add or []), body)


def legacy(*, drop: tuple[str, ...] = (), add: Headers | None = None, body: Any = None) -> Build:
    """A request on alice's open 2025-11-25 session."""
    raw = body if isinstance(body, bytes) else body_of(body if body is not None else LEGACY_CALL)
    return lambda lab: lab.request("POST", SINGLE, without(legacy_headers(), *drop) + (add or []), raw)


def get(path: str, add: Headers | None = None, host: str = "127.0.0.1:{port}") -> Build:
    return lambda lab: lab.request("GET", path, [("Host", host), *(add or [])])


def with_id(request_id: Any) -> bytes:
    return body_of({**modern_call(), "id": request_id})


def jws(header: str, payload: str = '{"sub": "x"}') -> str:
    def seg(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    return f"{seg(header)}.{seg(payload)}.c2ln"


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    status: int
    code: int | None = None  # the JSON-RPC error code of the answer; None: a result, or not a JSON-RPC answer
    says: str = ""  # in the error message (or, without a code, in the body)


def ok(name: str, build: Build) -> Case:
    """Unusual but valid: served (the echo answers)."""
    return Case(name, build, 200, None, '"structuredContent":{"result":"hi"}')


def repeated(header: str, shown: str, value: str) -> Case:
    return Case(
        f"repeated {header}",
        modern(add=[(header, value)] * (1 if header.lower() in {n.lower() for n, _ in modern_headers()} else 2)),
        400,
        INVALID_REQUEST,
        f"Bad Request: repeated {shown} header (send it once)",
    )


def host(value: str, status: int, says: str) -> Case:
    code = FORBIDDEN if status == 403 else INVALID_REQUEST
    return Case(f"Host {value!r}", modern(drop=("Host",), add=[("Host", value)]), status, code, says)


def origin(value: str, allowed: bool) -> Case:
    build = modern(add=[("Origin", value)])
    if allowed:
        return ok(f"Origin {value!r}", build)
    return Case(f"Origin {value!r}", build, 403, INVALID_REQUEST, "Forbidden: foreign Origin")


def authorization(label: str, value: str | None, status: int, says: str, code: int | None = UNAUTHORIZED) -> Case:
    add = [("Authorization", value)] if value is not None else []
    return Case(f"Authorization {label}", modern(drop=("Authorization",), add=add), status, code, says)


MALFORMED_HOST = "Bad Request: malformed Host header (expected host[:port])"
MALFORMED_BEARER = "invalid token: malformed bearer token (one RFC 6750 b64token expected)"
BAD_ID = '"id" must be a string or an integer'
PARSER = "Invalid HTTP request received."  # uvicorn's own answer to what its HTTP parser refuses

CASES: list[Case] = [
    # -- repeated single-valued headers: refused before anything reads either copy -----------------------------------
    repeated("Host", "Host", "127.0.0.1:{port}"),
    repeated("Host", "Host", "evil.example"),
    repeated("HOST", "Host", "127.0.0.1:{port}"),
    repeated("Authorization", "Authorization", "Bearer {ci}"),
    repeated("authorization", "Authorization", "Bearer {alice}"),
    repeated("MCP-Protocol-Version", "MCP-Protocol-Version", LEGACY),
    repeated("mcp-protocol-version", "MCP-Protocol-Version", MODERN),
    repeated("Mcp-Session-Id", "Mcp-Session-Id", "{session}"),
    repeated("Mcp-Method", "Mcp-Method", "tools/list"),
    repeated("Mcp-Name", "Mcp-Name", "echo"),
    repeated("Content-Type", "Content-Type", "application/json"),
    repeated("Last-Event-ID", "Last-Event-ID", "1"),
    Case(
        "repeated Origin",
        modern(add=[("Origin", "http://localhost:3000"), ("Origin", "http://evil.example")]),
        400,
        INVALID_REQUEST,
        "Bad Request: repeated Origin header (send it once)",
    ),
    Case(
        "repeated x-tfy-mcp-headers",
        modern(path=OVERRIDABLE, add=[("x-tfy-mcp-headers", "{}"), ("X-TFY-MCP-HEADERS", "{}")]),
        400,
        INVALID_REQUEST,
        "Bad Request: repeated x-tfy-mcp-headers header (send it once)",
    ),
    Case("repeated Content-Length", modern(add=[("Content-Length", str(len(GOOD)))] * 2), 400, None, PARSER),
    Case(
        "repeated Mcp-Session-Id on a session",
        legacy(add=[("Mcp-Session-Id", "{session}")]),
        400,
        INVALID_REQUEST,
        "repeated Mcp-Session-Id header",
    ),
    Case(
        "repeated Authorization unauthenticated route",
        get("/.well-known/oauth-protected-resource", [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]),
        400,
        INVALID_REQUEST,
        "repeated Authorization header",
    ),
    Case("repeated Host /healthz", get("/healthz", [("Host", "x")]), 400, INVALID_REQUEST, "repeated Host header"),
    Case("repeated Host /metrics", get("/metrics", [("Host", "x")]), 400, INVALID_REQUEST, "repeated Host header"),
    Case(
        "repeated Host /admin",
        get("/admin/groups/lab", [("Host", "127.0.0.1")]),
        400,
        INVALID_REQUEST,
        "repeated Host header",
    ),
    Case(
        "repeated Host unconfigured path",
        modern(path="/mcp-server/lab/nope/server", add=[("Host", "127.0.0.1:{port}")]),
        400,
        INVALID_REQUEST,
        "repeated Host header",
    ),
    # -- header bytes the HTTP parser refuses (never reach the gateway) ----------------------------------------------
    Case("CR in a header value", modern(add=[("X-Note", "a\rb")]), 400, None, PARSER),
    Case("LF in a header value", modern(add=[("X-Note", "a\nInjected: 1")]), 400, None, PARSER),
    Case("NUL in a header value", modern(add=[("X-Note", "a\x00b")]), 400, None, PARSER),
    Case("ESC in a header value", modern(add=[("X-Note", "\x1b[2J")]), 400, None, PARSER),
    Case("space in a header name", modern(add=[("X Note", "a")]), 400, None, PARSER),
    # -- Host ------------------------------------------------------------------------------------------------------
    host("evil.example@127.0.0.1", 400, MALFORMED_HOST),
    host("127.0.0.1@evil.example", 400, MALFORMED_HOST),
    host("user:pw@127.0.0.1:{port}", 400, MALFORMED_HOST),
    host("127.0.0.1:{port}/mcp", 400, MALFORMED_HOST),
    host("127.0.0.1:{port}?x", 400, MALFORMED_HOST),
    host("127.0.0.1#x", 400, MALFORMED_HOST),
    host("127.0.0.1 :{port}", 400, MALFORMED_HOST),
    host("127.0.0.1:", 400, MALFORMED_HOST),
    host("127.0.0.1:99999", 400, MALFORMED_HOST),
    host("127.0.0.1:8x", 400, MALFORMED_HOST),
    host("127.0.0.1:+80", 400, MALFORMED_HOST),
    host("127.1", 400, MALFORMED_HOST),
    host("[::1", 400, MALFORMED_HOST),
    host("[fe80::1%25eth0]", 400, MALFORMED_HOST),
    host("[v1.fe]", 400, MALFORMED_HOST),
    host("h\u00e9.example", 400, MALFORMED_HOST),
    host("", 400, MALFORMED_HOST),
    host("a,b", 400, MALFORMED_HOST),
    host("evil.example", 421, "Misdirected Request: unknown Host"),
    host("evil.example:{port}", 421, "Misdirected Request: unknown Host"),
    host("127.0.0.1.evil.example", 421, "Misdirected Request: unknown Host"),
    host("0x7f.0.0.1", 421, "Misdirected Request: unknown Host"),
    Case("no Host", modern(drop=("Host",)), 400, INVALID_REQUEST, "Bad Request: missing Host header"),
    ok("Host [::1]", modern(drop=("Host",), add=[("Host", "[::1]:{port}")])),
    ok("Host LOCALHOST", modern(drop=("Host",), add=[("Host", "LOCALHOST:{port}")])),
    ok("Host without port", modern(drop=("Host",), add=[("Host", "127.0.0.1")])),
    # -- Origin ----------------------------------------------------------------------------------------------------
    origin("http://evil.example", allowed=False),
    origin("null", allowed=False),
    origin("http://evil.example@127.0.0.1", allowed=False),
    origin("http://127.0.0.1@evil.example", allowed=False),
    origin("http://localhost:3000/path", allowed=False),
    origin("http://127.0.0.1.evil.example", allowed=False),
    origin("file:///etc/passwd", allowed=False),
    origin("javascript:alert(1)", allowed=False),
    origin("http://127.0.0.1:99999", allowed=False),
    origin("http://[::1", allowed=False),
    origin("", allowed=False),
    origin("http://caf\u00e9.example", allowed=False),
    origin("http://localhost:3000", allowed=True),
    origin("http://[::1]:8080", allowed=True),
    origin("HTTPS://LOCALHOST", allowed=True),
    origin("http://127.0.0.1:{port}", allowed=True),
    # -- Authorization ---------------------------------------------------------------------------------------------
    authorization("missing", None, 401, "missing bearer token (Authorization: Bearer ...)"),
    authorization("scheme only", "Bearer", 401, "the Authorization header must be 'Bearer <token>'"),
    authorization("empty", "", 401, "the Authorization header must be 'Bearer <token>'"),
    authorization("Basic", "Basic YWxpY2U6cHc=", 401, "the Authorization header must be 'Bearer <token>'"),
    authorization("Token scheme", "Token {alice}", 401, "the Authorization header must be 'Bearer <token>'"),
    authorization("two tokens", "Bearer {alice} {ci}", 401, MALFORMED_BEARER),
    authorization("comma list", "Bearer {alice}, Bearer {ci}", 401, MALFORMED_BEARER),
    authorization("quoted", 'Bearer "{alice}"', 401, MALFORMED_BEARER),
    authorization("non-ASCII", "Bearer caf\u00e9", 401, MALFORMED_BEARER),
    authorization("huge", "Bearer " + "a" * 20_000, 401, "invalid token: token too large"),
    authorization("unknown gateway token", "Bearer vmcp_000000000000_nope", 401, "unknown, revoked or expired"),
    authorization("token with padding", "Bearer {alice}==", 401, "unknown, revoked or expired"),
    authorization("not a JWT", "Bearer a.b.c", 401, "invalid token: malformed token"),
    authorization(
        "JWT nested header",
        "Bearer " + jws('{"alg": "HS256", "x": ' + "[" * 300 + "]" * 300 + "}"),
        401,
        "malformed token header (nested deeper than 4 levels)",
    ),
    authorization(
        "JWT with jku",
        "Bearer " + jws('{"alg": "HS256", "jku": "http://evil.example/jwks"}'),
        401,
        "header parameter 'jku' is not accepted",
    ),
    authorization("JWT alg none", "Bearer " + jws('{"alg": "none"}'), 401, "unsigned tokens (alg none)"),
    ok("Authorization lower-case scheme", modern(drop=("Authorization",), add=[("Authorization", "bearer {alice}")])),
    ok("Authorization upper-case scheme", modern(drop=("Authorization",), add=[("Authorization", "BEARER {alice}")])),
    ok("an unrelated 40 KiB header", modern(add=[("X-Junk", "j" * 40_960)])),
    ok("Authorization two spaces", modern(drop=("Authorization",), add=[("Authorization", "Bearer  {alice}")])),
    # -- credentials in the query string ---------------------------------------------------------------------------
    *[
        Case(
            f"query {key}",
            modern(path=f"{SINGLE}?{key}=vmcp_000000000000_x"),
            400,
            UNAUTHORIZED,
            "credentials in the query string are never accepted",
        )
        for key in ("access_token", "token", "api_key", "ACCESS_TOKEN", "bearer")
    ],
    ok("harmless query", modern(path=f"{SINGLE}?trace=1")),
    # -- paths -----------------------------------------------------------------------------------------------------
    Case(
        "unconfigured server",
        modern(path="/mcp-server/lab/nope/server"),
        403,
        FORBIDDEN,
        "Forbidden: you are not authorized for lab/nope",
    ),
    Case(
        "traversal",
        modern(path="/mcp-server/lab/tools/server/../../other/x/server"),
        403,
        FORBIDDEN,
        "Forbidden: you are not authorized for lab/tools",
    ),
    Case(
        "encoded slash",
        modern(path="/mcp-server/lab%2Ftools/x/server"),
        403,
        FORBIDDEN,
        "Forbidden: you are not authorized for lab/tools",
    ),
    ok("percent-encoded letters", modern(path="/mcp-server/lab/to%6Fls/server")),
    Case(
        "quote in an unconfigured path, unauthenticated",
        modern(path="/mcp-server/a%22,error=%22x/b/server", drop=("Authorization",)),
        401,
        UNAUTHORIZED,
        "missing bearer token",
    ),
    Case(
        "huge path",
        modern(path="/mcp-server/" + "a" * 20_000 + "/b/server"),
        403,
        FORBIDDEN,
        "Forbidden: you are not authorized for " + "a" * 81 + "...",
    ),
    Case("CR/LF in a path", modern(path="/mcp-server/a%0d%0aForged:%20line/b/server"), 404, None, "Not Found"),
    Case("upper-case endpoint", modern(path="/MCP"), 404, None, "Not Found"),
    # -- methods ---------------------------------------------------------------------------------------------------
    *[Case(f"method {m}", modern(method=m), 405, None, "Method Not Allowed") for m in ("PUT", "PATCH", "OPTIONS")],
    Case("method TRACE", modern(method="TRACE", body=b""), 405, None, "Method Not Allowed"),
    Case("GET without a session (2026-07-28)", modern(method="GET", body=b""), 405, None),
    # -- content types ---------------------------------------------------------------------------------------------
    *[
        Case(
            f"Content-Type {value!r}",
            modern(drop=("Content-Type",), add=[("Content-Type", value)] if value else []),
            415,
            INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        )
        for value in ("text/plain", "", "application/jsonx", "application/x-www-form-urlencoded", "multipart/form-data")
    ],
    Case(
        "no Content-Type",
        modern(drop=("Content-Type",)),
        415,
        INVALID_REQUEST,
        "Unsupported Media Type: Content-Type must be application/json",
    ),
    ok(
        "Content-Type with charset",
        modern(drop=("Content-Type",), add=[("Content-Type", "Application/JSON; charset=utf-8")]),
    ),
    # -- bodies ----------------------------------------------------------------------------------------------------
    Case("not JSON", modern(body=b"hello"), 400, PARSE_ERROR, "Parse error"),
    Case("empty body", modern(body=b""), 400, PARSE_ERROR, "Parse error"),
    Case("truncated JSON", modern(body=GOOD[:-3]), 400, PARSE_ERROR, "Parse error"),
    Case("nested 100,000 deep", modern(body=b"[" * 100_000 + b"]" * 100_000), 400, PARSE_ERROR, "Parse error"),
    Case(
        "argument nested 50,000 deep",
        modern(body=GOOD.replace(b'"text": "hi"', b'"text": ' + b"[" * 50_000 + b"]" * 50_000)),
        400,
        PARSE_ERROR,
        "Parse error",
    ),
    Case("huge", modern(add=[("Content-Length", str(5 * 1024 * 1024))], body=b""), 413, INVALID_REQUEST, "too large"),
    Case("batch", modern(body=b"[" + GOOD + b"]"), 400, INVALID_REQUEST, "batches are not supported"),
    Case("empty batch", modern(body=b"[]"), 400, INVALID_REQUEST, "batches are not supported"),
    Case("a string", modern(body=b'"tools/call"'), 400, INVALID_REQUEST, "one JSON-RPC 2.0 object"),
    Case("jsonrpc 1.0", modern(body=GOOD.replace(b'"2.0"', b'"1.0"')), 400, INVALID_REQUEST, "JSON-RPC 2.0 object"),
    Case(
        "no jsonrpc",
        modern(body=body_of({k: v for k, v in modern_call().items() if k != "jsonrpc"})),
        400,
        INVALID_REQUEST,
        "JSON-RPC 2.0",
    ),
    *[
        Case(f"id {label}", modern(body=with_id(value)), 400, INVALID_REQUEST, BAD_ID)
        for label, value in (("null", None), ("1.5", 1.5), ("true", True), ("[1]", [1]), ("{}", {}))
    ],
    *[
        Case(f"2025-11-25 session id {label}", legacy(body={**LEGACY_CALL, "id": value}), 400, INVALID_REQUEST, BAD_ID)
        for label, value in (("null", None), ("1.5", 1.5), ("false", False), ("[1]", [1]), ("{}", {}))
    ],
    ok("id string", modern(body=with_id("a-string-id"))),
    # The same for other methods, and for a request that would open a session.
    Case(
        "2025-11-25 tools/list id null",
        legacy(body={"jsonrpc": "2.0", "id": None, "method": "tools/list"}),
        400,
        INVALID_REQUEST,
        BAD_ID,
    ),
    Case(
        "2025-11-25 ping id 1.5",
        legacy(body={"jsonrpc": "2.0", "id": 1.5, "method": "ping"}),
        400,
        INVALID_REQUEST,
        BAD_ID,
    ),
    Case(
        "initialize id true",
        legacy(
            drop=("Mcp-Session-Id", "MCP-Protocol-Version"),
            body={
                "jsonrpc": "2.0",
                "id": True,
                "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}},
            },
        ),
        400,
        INVALID_REQUEST,
        BAD_ID,
    ),
    Case(
        "tools/list id [1]",
        modern(
            body=body_of(
                {
                    **modern_call(),
                    "id": [1],
                    "method": "tools/list",
                    "params": {"_meta": modern_call()["params"]["_meta"]},
                }
            ),
            drop=("Mcp-Method", "Mcp-Name"),
            add=[("Mcp-Method", "tools/list")],
        ),
        400,
        INVALID_REQUEST,
        BAD_ID,
    ),
    Case(
        "2025-11-25 notification (no id) accepted",
        legacy(body={"jsonrpc": "2.0", "method": "notifications/initialized"}),
        202,
    ),
    Case(
        "method a number",
        modern(body=body_of({**modern_call(), "method": 5})),
        400,
        INVALID_REQUEST,
        'a string "method"',
    ),
    Case(
        "method missing", modern(body=body_of({"jsonrpc": "2.0", "id": 1})), 400, INVALID_REQUEST, 'a string "method"'
    ),
    Case(
        "method unknown",
        modern(
            body=GOOD.replace(b"tools/call", b"tools/nope"),
            drop=("Mcp-Method", "Mcp-Name"),
            add=[("Mcp-Method", "tools/nope")],
        ),
        404,
        METHOD_NOT_FOUND,
        "Method not found",
    ),
    Case(
        "Mcp-Method disagrees with the body",
        modern(drop=("Mcp-Method",), add=[("Mcp-Method", "tools/list")]),
        400,
        MISMATCH,
    ),
    Case("Mcp-Name disagrees with the body", modern(name="add"), 400, MISMATCH),
    Case(
        "params an array",
        modern(body=body_of({**modern_call(), "params": [1]})),
        400,
        INVALID_REQUEST,
        "Body must be a single JSON-RPC request",
    ),
    Case(
        "unknown tool",
        modern(body=body_of(modern_call("nope")), name="nope"),
        400,
        INVALID_PARAMS,
        "Unknown tool: 'nope'",
    ),
    Case(
        "2025-11-25 arguments an array",
        legacy(body={**LEGACY_CALL, "params": {"name": "echo", "arguments": [1]}}),
        200,
        INVALID_PARAMS,
    ),
    Case("2025-11-25 unknown method", legacy(body={**LEGACY_CALL, "method": "nope/x"}), 200, METHOD_NOT_FOUND),
    Case(
        "2025-11-25 unknown session",
        legacy(drop=("Mcp-Session-Id",), add=[("Mcp-Session-Id", "deadbeef")]),
        404,
        INVALID_REQUEST,
        "Session not found",
    ),
    Case(
        "unsupported protocol version",
        modern(drop=("MCP-Protocol-Version",), add=[("MCP-Protocol-Version", "1999-01-01")]),
        400,
    ),
    # -- x-tfy-mcp-headers -------------------------------------------------------------------------------------------
    *[
        Case(
            f"overrides {label}",
            modern(path=OVERRIDABLE, add=[("x-tfy-mcp-headers", value)]),
            400,
            INVALID_REQUEST,
            says,
        )
        for label, value, says in (
            ("not JSON", "nope", "x-tfy-mcp-headers: not valid JSON"),
            ("nested 3,000 deep", "{" * 3000 + "}" * 3000, "nested deeper"),
            ("value an object", '{"lab/keyed": {"x-api-key": {"a": "b"}}}', "nested deeper"),
            ("an array", "[1]", "must be a JSON object keyed 'group/server'"),
            ("unknown server", '{"lab/nope": {}}', "no server 'lab/nope' is available to you"),
            ("managed header", '{"lab/keyed": {"Host": "x"}}', "is managed by the gateway"),
            ("not forwardable", '{"lab/keyed": {"X-Other": "x"}}', "not in the server's forwardable_headers"),
            ("control character", '{"lab/keyed": {"X-Api-Key": "a\\r\\nb"}}', "contains CR, LF"),
            ("too long", '{"lab/keyed": {"X-Api-Key": "' + "k" * 20_000 + '"}}', "longer than 16384 bytes"),
        )
    ],
    ok(
        "overrides a forwardable header",
        modern(path=OVERRIDABLE, add=[("x-tfy-mcp-headers", '{"lab/keyed": {"X-Api-Key": "caller-key-123"}}')]),
    ),
    # -- who may see what: the same answer for a forbidden server and one that does not exist --------------------------
    Case(
        "forbidden server, bad overrides",
        modern(bearer="{mallory}", add=[("x-tfy-mcp-headers", "nope")]),
        403,
        FORBIDDEN,
        "lab/tools",
    ),
    Case("forbidden server, bad body", modern(bearer="{mallory}", body=b"nope"), 403, FORBIDDEN, "lab/tools"),
    Case(
        "aggregate endpoint, no tools for mallory",
        modern(
            path=AGGREGATE, bearer="{mallory}", name="lab__tools__echo", body=body_of(modern_call("lab__tools__echo"))
        ),
        400,
        INVALID_PARAMS,
        "Unknown tool",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_request_gets_its_precise_answer_and_others_are_served(lab: FrontLab, case: Case) -> None:
    answer = await lab.send(case.build(lab))
    assert answer.status == case.status, (answer.status, answer.body[:300])
    if case.code is not None:
        message = answer.json()
        assert message["jsonrpc"] == "2.0" and "result" not in message, message
        assert message["error"]["code"] == case.code, message
        assert case.says in message["error"]["message"], message
    elif case.says:
        assert case.says.encode() in answer.body, answer.body[:300]
    await lab.good_call()


# -- what a caller's path can do to the answer's headers and to the log ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        ("/mcp-server/a%22,error=%22x/b/server", "/mcp-server/a%22%2Cerror%3D%22x/b/server"),
        ("/mcp-server/a%5C%22/b/server", "/mcp-server/a%5C%22/b/server"),
        ("/mcp-server/a%20b;c/d/server", "/mcp-server/a%20b%3Bc/d/server"),
        ("/mcp-server/caf%C3%A9/d/server", "/mcp-server/caf%C3%A9/d/server"),
        ("/mcp-server/a%0db/d/server", "/mcp-server/a%0Db/d/server"),
    ],
)
async def test_a_path_cannot_add_parameters_to_the_challenge(lab: FrontLab, path: str, encoded: str) -> None:
    """The 401 challenge names the metadata URL of the path asked for: percent-encoded, in a well-formed
    quoted-string, so a `"` in a path cannot close it and add `error=` (or anything) of the caller's own."""
    answer = await lab.send(modern(path=path, drop=("Authorization",))(lab))
    assert answer.status == 401
    expected = f'Bearer resource_metadata="http://127.0.0.1:{lab.port}/.well-known/oauth-protected-resource{encoded}"'
    assert answer.header("www-authenticate") == expected
    await lab.good_call()


async def test_a_path_with_cr_lf_cannot_forge_a_log_line(lab: FrontLab) -> None:
    """Logged through the gateway's own handler (`virtual-mcp --log-level debug`), the caller's CR/LF is escaped:
    every line the request produced is a line the gateway wrote."""
    out = io.StringIO()
    handler = line_handler(stream=out)
    gateway_logs = logging.getLogger("virtual_mcp")
    gateway_logs.addHandler(handler)
    try:
        for path in ("/mcp-server/a%0d%0aFORGED%20line/b/server", "/mcp-server/a%0dFORGED/b/server"):
            await lab.send(modern(path=path, drop=("Authorization",))(lab))
            await lab.send(modern(path=path)(lab))
    finally:
        gateway_logs.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines and not any(line.startswith("FORGED") or "\r" in line for line in lines), lines
    assert any("\\r\\nFORGED line" in line for line in lines), lines
    await lab.good_call()


# -- the same answer for a forbidden server and one that does not exist, whatever else is wrong ----------------------

PER_RESPONSE = {"date", "x-request-id"}
AUTHS = {"none": None, "refused token": "Bearer vmcp_000000000000_nope", "valid, forbidden": "Bearer {mallory}"}
OVERRIDES = {"none": None, "malformed": "nope", "deep": "{" * 500 + "}" * 500, "naming it": '{"lab/tools": {}}'}
BODIES = {
    "good": GOOD,
    "not JSON": b"nope",
    "bad id": with_id(None),
    "batch": b"[" + GOOD + b"]",
}
CONTENT_TYPES = ("application/json", "text/plain")
METHODS = ("GET", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS")
SESSIONS = (None, "deadbeef")


def variants() -> list[tuple[str, str, Headers, bytes]]:
    """Every combination of the checks' inputs: (label, method, headers, body)."""
    out = []
    for (auth_label, auth), (over_label, over), session in (
        (a, o, s) for a in AUTHS.items() for o in OVERRIDES.items() for s in SESSIONS
    ):
        base: Headers = [("Host", "127.0.0.1:{port}"), ("Accept", "application/json, text/event-stream")]
        base += [("Authorization", auth)] if auth else []
        base += [("x-tfy-mcp-headers", over)] if over else []
        base += [("Mcp-Session-Id", session)] if session else []
        label = f"{auth_label} / overrides {over_label} / session {session}"
        for (body_label, body), content_type in ((b, c) for b in BODIES.items() for c in CONTENT_TYPES):
            headers = [*base, ("Content-Type", content_type), ("MCP-Protocol-Version", MODERN)]
            out.append((f"{label} / POST {body_label} {content_type}", "POST", headers, body))
        out += [(f"{label} / {method}", method, base, b"") for method in METHODS]
    return out


def comparable(answer: Any, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer without what differs per response (its date and id, the durations in Server-Timing; the phases
    timed stay: a phase only one of the two runs would tell them apart), the server's name replaced."""
    headers = sorted(
        (
            k,
            ",".join(p.split(";")[0].strip() for p in v.split(","))
            if k == "server-timing"
            else v.replace(name, "NAME"),
        )
        for k, v in answer.headers
        if k not in PER_RESPONSE
    )
    return answer.status, headers, answer.body.replace(name.encode(), b"NAME")


async def test_a_forbidden_server_and_an_unknown_one_get_the_same_answer_in_every_order_of_checks(
    lab: FrontLab,
) -> None:
    """Unauthenticated, refused token, bad overrides, forbidden, bad body, bad content type, a session header, each
    method: for mallory, `lab/tools` (configured, not hers) and `lab/nopes` (no such server, a name of the same
    length) answer byte for byte alike but for the name."""
    cases = variants()
    assert len(cases) == len(AUTHS) * len(OVERRIDES) * len(SESSIONS) * (len(BODIES) * len(CONTENT_TYPES) + len(METHODS))
    statuses = set()
    for label, method, headers, body in cases:
        known = await lab.send(lab.request(method, "/mcp-server/lab/tools/server", headers, body))
        unknown = await lab.send(lab.request(method, "/mcp-server/lab/nopes/server", headers, body))
        assert comparable(known, "lab/tools") == comparable(unknown, "lab/nopes"), (label, known, unknown)
        statuses.add(known.status)
    assert statuses >= {401, 403, 405}
    await lab.good_call()


async def test_every_good_call_after_a_hostile_one_was_audited(lab: FrontLab) -> None:
    """Nothing lost: each call the other caller made between hostile requests is in the audit trail."""
    events = await lab.gw.audit(virtual_account="ci", method="tools/call", limit=100_000)
    assert len(events) == lab.good_calls > 0
    assert all(e.outcome == "allowed" and e.server == "lab/tools" for e in events)

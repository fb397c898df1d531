"""Malformed and hostile input, sent as raw HTTP (httpx) to the aggregate endpoint and to a single-server endpoint.

Each protocol era gets requests in its own shape: 2025-11-25 opens a session with `initialize` and then carries
`mcp-session-id`; 2026-07-28 requests are self-contained, with the per-request `_meta` envelope and the
`mcp-protocol-version` / `mcp-method` / `mcp-name` headers. After every bad request a real client still gets
served, and so does the raw session the bad request was sent on.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp
import pytest

from tests.backends import build_lab
from tests.support import Served, gateway, serve, write_config

LEGACY, MODERN = "2025-11-25", "2026-07-28"
ERAS = [LEGACY, MODERN]
AGGREGATE, SINGLE = "/mcp", "/mcp-server/lab/lab/server"
ENDPOINTS = [AGGREGATE, SINGLE]
ECHO = {AGGREGATE: "lab__lab__echo", SINGLE: "echo"}
ACCEPT = "application/json, text/event-stream"
BODY_LIMIT = 4096
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602
UNSUPPORTED_PROTOCOL_VERSION = -32022


def rpc(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether sent as plain JSON or as one SSE event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line.removeprefix("data:"))
                if "id" in message:
                    return dict(message)
        raise AssertionError(f"no JSON-RPC response in the event stream: {response.text!r}")
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    message = rpc(response)
    assert message.get("jsonrpc") == "2.0" and "result" not in message, message
    assert message["error"]["code"] == code, message
    error: dict[str, Any] = message["error"]
    return error


class Raw:
    """A hand-made MCP client for one endpoint in one era: it sends exactly what the test asks for."""

    def __init__(self, http: httpx.AsyncClient, path: str, era: str) -> None:
        self.http = http
        self.path = path
        self.era = era
        self.session: str | None = None
        self._ids = itertools.count(1)

    async def open(self, **headers: str) -> None:
        """Start a 2025-11-25 session (initialize, then notifications/initialized); nothing to do for 2026-07-28."""
        if self.era == MODERN:
            return
        params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        response = await self.post(self.request("initialize", params), **headers)
        assert response.status_code == 200, response.text
        assert rpc(response)["result"]["protocolVersion"] == LEGACY
        self.session = response.headers["mcp-session-id"]
        notified = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, **headers)
        assert notified.status_code == 202, notified.text

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = dict(params or {})
        if self.era == MODERN:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params:
            body["params"] = params
        return body

    def headers(self, body: Any = None) -> dict[str, str]:
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        if self.session:
            headers["mcp-session-id"] = self.session
            headers["mcp-protocol-version"] = LEGACY
        if self.era == MODERN:
            headers["mcp-protocol-version"] = MODERN
            method = body.get("method") if isinstance(body, dict) else None
            if isinstance(method, str):
                headers["mcp-method"] = method
                name = (body.get("params") or {}).get("name")
                if method == "tools/call" and isinstance(name, str):
                    headers["mcp-name"] = name
        return headers

    async def post(self, body: Any, *, raw: bytes | None = None, **extra: str) -> httpx.Response:
        """POST `body` as JSON (or the bytes `raw`, with the headers `body` would get); `extra` headers win.

        A header name in `extra` uses underscores for dashes (mcp_protocol_version=...).
        """
        headers = {**self.headers(body), **{k.replace("_", "-"): v for k, v in extra.items()}}
        content = raw if raw is not None else json.dumps(body).encode()
        return await self.http.post(self.path, content=content, headers=headers)

    async def call(self, method: str, params: dict[str, Any] | None = None, **extra: str) -> httpx.Response:
        return await self.post(self.request(method, params), **extra)

    async def assert_alive(self) -> None:
        """The raw session (or, for 2026-07-28, the raw request shape) still works."""
        response = await self.call("tools/call", {"name": ECHO[self.path], "arguments": {"text": "raw"}})
        assert response.status_code == 200, response.text
        assert rpc(response)["result"]["structuredContent"] == {"result": "raw"}


class Watched(Raw):
    """A raw client alongside a real client that stays connected to the same endpoint all along."""

    def __init__(self, http: httpx.AsyncClient, path: str, era: str, real: mcp.Client) -> None:
        super().__init__(http, path, era)
        self.real = real

    async def still_ok(self) -> None:
        """After a bad request: the raw session and the real client both still get a tool call through."""
        await self.assert_alive()
        result = await self.real.call_tool(ECHO[self.path], {"text": "real"})
        assert result.structured_content == {"result": "real"}


@asynccontextmanager
async def lab_gateway(tmp_path: Path) -> AsyncIterator[tuple[Served, httpx.AsyncClient]]:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_config(tmp_path / "servers.d", {"lab": backend.url})
        async with (
            gateway(config, max_request_body_bytes=BODY_LIMIT) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
        ):
            yield gw, http


@asynccontextmanager
async def watched(gw: Served, http: httpx.AsyncClient, path: str, era: str) -> AsyncIterator[Watched]:
    """A `Watched` raw client (not opened yet) for `path`; when the block ends, a new real client is served too."""
    mode = "legacy" if era == LEGACY else era
    async with mcp.Client(gw.url + path, mode=mode) as real:
        yield Watched(http, path, era, real)
    async with mcp.Client(gw.url + path, mode=mode) as fresh:
        result = await fresh.call_tool(ECHO[path], {"text": "fresh"})
        assert result.structured_content == {"result": "fresh"}


# -- the body ------------------------------------------------------------------------------------------------------

MALFORMED = [b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"', b"{'single': 'quotes'}", b"\xff\xfe\x00", b""]


def not_utf8_json(tool: str) -> list[bytes]:
    """A plain tools/call, but not JSON as a 2025-11-25 session's transport parses it (UTF-8 without a byte-order
    mark): a parse error there, never a call (the SDK's 2026-07-28 entry reads both, so only that era is checked)."""
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    return [call.encode("utf-8-sig"), call.encode("utf-16")]


NOT_A_REQUEST = [b'{"hello": "world"}', b'{"jsonrpc": "2.0", "id": 1}', b'"tools/list"', b"42", b"[1, 2]"]


@pytest.mark.parametrize("era", ERAS)
async def test_malformed_json_is_a_parse_error(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                if era == LEGACY:
                    # Before any session exists: the very first request is broken.
                    for body in MALFORMED:
                        assert_error(await raw.post(None, raw=body), 400, PARSE_ERROR)
                        assert (await raw.real.call_tool(ECHO[path], {"text": "x"})).structured_content == {
                            "result": "x"
                        }
                await raw.open()
                for body in MALFORMED + (not_utf8_json(ECHO[path]) if era == LEGACY else []):
                    assert_error(await raw.post(raw.request("tools/list"), raw=body), 400, PARSE_ERROR)
                    await raw.still_ok()


@pytest.mark.parametrize("era", [LEGACY, MODERN])
async def test_json_that_is_not_a_request_is_an_invalid_request(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                await raw.open()
                for body in NOT_A_REQUEST:
                    assert_error(await raw.post(raw.request("tools/list"), raw=body), 400, INVALID_REQUEST)
                    await raw.still_ok()


@pytest.mark.parametrize("era", ERAS)
async def test_oversize_body_is_refused(tmp_path: Path, era: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No content-length: the limit must hold for a streamed (chunked) body too.
        for _ in range(BODY_LIMIT // 512 + 2):
            yield b" " * 512

    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                await raw.open()
                big = raw.request("tools/call", {"name": ECHO[path], "arguments": {"text": "x" * BODY_LIMIT}})
                assert (await raw.post(big)).status_code == 413
                await raw.still_ok()
                streamed = await http.post(path, content=chunks(), headers=raw.headers(big))
                assert streamed.status_code == 413
                await raw.still_ok()
                # Just under the limit is fine.
                text = "x" * (BODY_LIMIT - 600)
                fits = raw.request("tools/call", {"name": ECHO[path], "arguments": {"text": text}})
                assert len(json.dumps(fits)) < BODY_LIMIT
                response = await raw.post(fits)
                assert response.status_code == 200, response.text
                assert rpc(response)["result"]["structuredContent"] == {"result": text}


# -- tools/call parameters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_unknown_tool_is_invalid_params_naming_it(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http), watched(gw, http, AGGREGATE, era) as raw:
        await raw.open()
        # No prefix at all, an unknown server of a known group, an unknown group.
        for name in ("nope", "lab__nope__echo", "other__lab__echo"):
            response = await raw.call("tools/call", {"name": name, "arguments": {}})
            error = assert_error(response, 200 if era == LEGACY else 400, INVALID_PARAMS)
            assert name in error["message"], error
            await raw.still_ok()


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(("path", "name"), [(AGGREGATE, "lab__lab__nope"), (SINGLE, "nope")])
async def test_unknown_tool_of_a_known_backend_is_invalid_params(
    tmp_path: Path, era: str, path: str, name: str
) -> None:
    async with lab_gateway(tmp_path) as (gw, http), watched(gw, http, path, era) as raw:
        await raw.open()
        response = await raw.call("tools/call", {"name": name, "arguments": {}})
        error = assert_error(response, 200 if era == LEGACY else 400, INVALID_PARAMS)
        assert name in error["message"], error
        await raw.still_ok()


@pytest.mark.parametrize("era", ERAS)
async def test_malformed_call_params_are_invalid_params(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                await raw.open()
                # Missing name, arguments that are not an object, no params at all.
                for params in ({"arguments": {"text": "x"}}, {"name": ECHO[path], "arguments": ["x"]}, {}):
                    response = await raw.call("tools/call", params)
                    assert_error(response, 200 if era == LEGACY else 400, INVALID_PARAMS)
                    await raw.still_ok()


# -- headers -------------------------------------------------------------------------------------------------------

FOREIGN_ORIGINS = ["http://evil.example", "https://localhost.evil.example", "http://127.0.0.1.evil.example", "null"]
LOOPBACK_ORIGINS = ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080"]


@pytest.mark.parametrize("era", ERAS)
async def test_foreign_origin_is_forbidden_loopback_origin_is_not(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                await raw.open()
                for origin in FOREIGN_ORIGINS:
                    # Not even a session can be opened from a foreign page...
                    stranger = Raw(http, path, era)
                    params = {
                        "protocolVersion": LEGACY,
                        "capabilities": {},
                        "clientInfo": {"name": "x", "version": "0"},
                    }
                    opening = (
                        stranger.request("initialize", params) if era == LEGACY else stranger.request("tools/list")
                    )
                    refused = await stranger.post(opening, origin=origin)
                    assert_error(refused, 403, INVALID_REQUEST)
                    assert "mcp-session-id" not in refused.headers
                    # ...nor an existing one used.
                    assert_error(await raw.call("tools/list", origin=origin), 403, INVALID_REQUEST)
                    await raw.still_ok()
                # Loopback pages, and pages served by the gateway itself (same origin), are fine.
                for origin in [*LOOPBACK_ORIGINS, gw.url]:
                    browser = Raw(http, path, era)
                    await browser.open(origin=origin)
                    response = await browser.call("tools/call", {"name": ECHO[path], "arguments": {"text": origin}})
                    assert response.status_code == 200, (origin, response.text)
                    assert rpc(response)["result"]["structuredContent"] == {"result": origin}


@pytest.mark.parametrize("era", ERAS)
async def test_unsupported_protocol_version_header_is_a_bad_request(tmp_path: Path, era: str) -> None:
    async with lab_gateway(tmp_path) as (gw, http):
        for path in ENDPOINTS:
            async with watched(gw, http, path, era) as raw:
                await raw.open()
                for version in ("1999-01-01", "2099-12-31", "latest"):
                    response = await raw.call("tools/list", mcp_protocol_version=version)
                    assert response.status_code == 400, (version, response.text)
                    assert "error" in rpc(response)
                    await raw.still_ok()
                if era == MODERN:
                    # Header and envelope agree on a version nobody serves: the answer says which ones are served.
                    body = raw.request("tools/list")
                    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "1999-01-01"
                    response = await raw.post(body, mcp_protocol_version="1999-01-01")
                    error = assert_error(response, 400, UNSUPPORTED_PROTOCOL_VERSION)
                    assert error["data"]["requested"] == "1999-01-01"
                    assert MODERN in error["data"]["supported"]
                    await raw.still_ok()

"""The 2026-07-28 `tools/call` fast path: which requests it takes and which it leaves to the SDK path (observed with a
spy on its answer), that both give the same answers, and the keepalive event stream of a call that outlasts the
window. Real backends and the production gateway on loopback, raw HTTP from the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastmcp import FastMCP

from tests.backends import build_lab
from tests.gateway.test_timing import ACCEPT, ALICE, CONFIG, IDENTITIES, MODERN, SINGLE, Raw, rpc
from tests.security_support import SecureGateway, secure_gateway
from tests.support import Served, serve
from virtual_mcp.gateway import fast_call
from virtual_mcp.gateway.fast_call import FastToolCalls
from virtual_mcp.types import PrincipalKind


@dataclass
class Lab:
    gw: SecureGateway
    backend: Served
    alice: str
    taken: list[bool]
    release: anyio.Event


@asynccontextmanager
async def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    taken: list[bool] = []
    original = FastToolCalls.__call__

    async def spy(self: FastToolCalls, *args: Any) -> bool:
        answered = await original(self, *args)
        taken.append(answered)
        return answered

    monkeypatch.setattr(FastToolCalls, "__call__", spy)
    release = anyio.Event()
    backend_app: FastMCP = build_lab()

    @backend_app.tool
    async def held() -> str:
        """Answers once the test lets it."""
        await release.wait()
        return "released"

    async with serve(backend_app.http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(CONFIG.format(url=backend.url))
        (config / "ids.yaml").write_text(IDENTITIES)
        async with secure_gateway(config, tmp_path / "data") as gw:
            yield Lab(gw, backend, await gw.token(PrincipalKind.USER, ALICE), taken, release)


async def test_a_plain_call_takes_the_fast_path_and_answers_like_the_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        fast = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "quick"}})
        assert t.taken == [True]
        # The same call through the SDK path (a progress token sends it there): the same answer, byte for byte
        # apart from what is per call.
        slow = await raw.call(
            "tools/call", {"name": "echo", "arguments": {"text": "quick"}, "_meta": {"progressToken": 1}}
        )
        assert t.taken == [True, False]
        assert fast.status_code == slow.status_code == 200
        assert fast.headers["content-type"] == "application/json"
        first, second = rpc(fast), rpc(slow)
        assert first["result"] == second["result"]
        assert first["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["title"] == "lab/tools"
        [call, _] = await t.gw.audit(method="tools/call")
        assert (call.server, call.tool, call.outcome) == ("lab/tools", "echo", "allowed")


@pytest.mark.parametrize(
    ("params", "headers", "why"),
    [
        ({"name": "echo", "arguments": {"text": "x"}, "_meta": {"progressToken": "p"}}, {}, "wants progress"),
        (
            {"name": "echo", "arguments": {"text": "x"}, "_meta": {"io.modelcontextprotocol/logLevel": "info"}},
            {},
            "wants logs",
        ),
        ({"name": "no_such_tool", "arguments": {}}, {}, "unknown tool"),
        ({"name": "echo", "arguments": {"text": "x"}}, {"mcp-name": "add"}, "header disagrees with body"),
        ({"name": "echo", "arguments": {"text": "x"}}, {"mcp-param-text": "x"}, "Mcp-Param header"),
        ({"name": "echo", "arguments": "not an object"}, {}, "malformed arguments"),
    ],
)
async def test_everything_else_is_left_to_the_sdk_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: dict[str, Any], headers: dict[str, str], why: str
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}
        meta = body["params"].setdefault("_meta", {})
        meta["io.modelcontextprotocol/protocolVersion"] = MODERN
        meta["io.modelcontextprotocol/clientCapabilities"] = {}
        base = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {t.alice}",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
            "mcp-name": str(params["name"]),
        }
        answer = await http.post(raw.url, content=json.dumps(body), headers={**base, **headers})
        assert t.taken == [False], why
        assert answer.status_code in (200, 400), answer.text  # the SDK's own answer, whatever it is


async def test_a_backend_that_is_gone_is_the_same_error_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        await raw.call("tools/call", {"name": "echo", "arguments": {"text": "warm"}})  # the catalog knows echo now
        t.backend.stop()
        await t.backend.server.shutdown()
        fast = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        slow = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": {"progressToken": 2}})
        assert t.taken == [True, True, False]
        assert fast.status_code == slow.status_code
        assert rpc(fast)["error"] == rpc(slow)["error"]
        assert rpc(fast)["error"]["code"] == -32010
        [down, *_] = await t.gw.audit(outcome="failed")
        assert down.server == "lab/tools" and down.error is not None


async def test_a_call_past_the_keepalive_window_becomes_a_stream_with_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_call, "_SSE_PING_INTERVAL", 0.05)
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        await raw.call("tools/call", {"name": "echo", "arguments": {"text": "warm"}})
        body = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {
                "name": "held",
                "arguments": {},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {t.alice}",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
            "mcp-name": "held",
        }
        received = b""
        with anyio.fail_after(10):
            async with http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"] == "text/event-stream"
                async for chunk in answer.aiter_bytes():
                    received += chunk
                    if b": ping" in received:
                        t.release.set()
        assert received.startswith(b": ping\r\n\r\n")
        events = [line for line in received.decode().splitlines() if line.startswith("data:")]
        [final] = [json.loads(line.removeprefix("data:")) for line in events]
        assert final["id"] == 9 and final["result"]["structuredContent"] == {"result": "released"}
        assert t.taken[-1] is True


async def test_a_tool_list_takes_the_fast_path_and_is_the_sdks_answer_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {t.alice}",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/list",
        }

        async def listed(path: str, extra_meta: dict[str, Any]) -> httpx2.Response:
            body = {
                "jsonrpc": "2.0",
                "id": "list-1",
                "method": "tools/list",
                "params": {"_meta": {**meta, **extra_meta}},
            }
            return await http.post(f"{t.gw.url}{path}", content=json.dumps(body), headers=headers)

        for path in (SINGLE, "/mcp"):
            t.taken.clear()
            first, again = await listed(path, {}), await listed(path, {})  # the second from the serialised cache
            through_sdk = await listed(path, {"progressToken": "p"})
            assert t.taken == [True, True, False]
            assert first.content == again.content == through_sdk.content
            assert first.headers["content-type"] == through_sdk.headers["content-type"] == "application/json"
            names = {tool["name"] for tool in rpc(first)["result"]["tools"]}
            assert ("echo" if path == SINGLE else "lab__tools__echo") in names
        # A cursor (this gateway returns one page) is the SDK path's to refuse.
        t.taken.clear()
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "x", "_meta": meta}}
        refused = await http.post(f"{t.gw.url}{SINGLE}", content=json.dumps(body), headers=headers)
        assert t.taken == [False] and "error" in rpc(refused)

"""The 2026-07-28 wire: a call that finishes silently is answered with JSON; one with something to say first (a
progress notification) or that outlasts the keepalive interval becomes an event stream; closing the stream cancels
the call; tool lists are the same answer every time; refusals are precise. Real backends and the production gateway
on loopback, raw HTTP from the test."""

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

from tests.gateway.test_timing import ACCEPT, MODERN, SINGLE, Raw, rpc
from tests.gateway.wire.lab import HeldLab, held_lab
from tests.gateway.wire.test_legacy import events
from virtual_mcp.gateway.wire import keepalive

ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Lab(HeldLab):
    def headers(self, method: str, name: str | None = None) -> dict[str, str]:
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {self.alice}",
            "mcp-protocol-version": MODERN,
            "mcp-method": method,
        }
        if name is not None:
            headers["mcp-name"] = name
        return headers


def call(request_id: int, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments, "_meta": {**ENVELOPE, **meta}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with held_lab(tmp_path) as held:
        yield Lab(held.gw, held.backend, held.probe, held.alice, held.release)


async def test_a_silent_call_is_answered_with_json_and_audited(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        answer = await http.post(
            f"{t.gw.url}{SINGLE}",
            content=json.dumps(call(3, "echo", {"text": "hi"})),
            headers=t.headers("tools/call", "echo"),
        )
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        result = answer.json()["result"]
        assert result["structuredContent"] == {"result": "hi"} and result["resultType"] == "complete"
        assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "virtual-mcp"
        [audited] = await t.gw.audit(method="tools/call")
        assert (audited.server, audited.tool, audited.outcome) == ("lab/tools", "echo", "allowed")


async def test_progress_turns_the_answer_into_an_event_stream(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        body = call(4, "progress", {"steps": 2}, progressToken=7)
        answer = await http.post(
            f"{t.gw.url}{SINGLE}", content=json.dumps(body), headers=t.headers("tools/call", "progress")
        )
        assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
        *progress, final = events(answer.content)
        assert [(p["params"]["progressToken"], p["params"]["progress"]) for p in progress] == [(7, 1.0), (7, 2.0)]
        assert final["id"] == 4 and final["result"]["resultType"] == "complete"


async def test_log_messages_are_an_opt_in_per_request(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        url, headers = f"{t.gw.url}{SINGLE}", t.headers("tools/call", "chatty")
        silent = await http.post(url, content=json.dumps(call(1, "chatty", {})), headers=headers)
        assert silent.headers["content-type"] == "application/json"  # no opt-in: nothing was relayed
        body = call(2, "chatty", {}, **{"io.modelcontextprotocol/logLevel": "info"})
        chatty = await http.post(url, content=json.dumps(body), headers=headers)
        *logged, final = events(chatty.content)
        assert final["id"] == 2
        assert [m["params"]["data"]["msg"] for m in logged] == ["info line", "warning line"]


async def test_a_backend_that_is_gone_is_a_precise_error(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        await raw.call("tools/call", {"name": "echo", "arguments": {"text": "warm"}})  # the catalog knows echo now
        t.backend.stop()
        await t.backend.server.shutdown()
        plain = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        progress = await raw.call(
            "tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": {"progressToken": 2}}
        )
        assert plain.status_code == progress.status_code
        assert rpc(plain)["error"] == rpc(progress)["error"] and rpc(plain)["error"]["code"] == -32010
        down = await t.gw.audit(outcome="failed")
        assert [d.server for d in down] == ["lab/tools", "lab/tools"]


async def test_closing_the_stream_cancels_the_call_at_the_backend(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        body = call(5, "held", {})
        async with anyio.create_task_group() as tg:

            async def post() -> None:
                async with http.stream(
                    "POST", f"{t.gw.url}{SINGLE}", content=json.dumps(body), headers=t.headers("tools/call", "held")
                ) as answer:
                    await answer.aread()

            tg.start_soon(post)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            tg.cancel_scope.cancel()  # the client goes away
        with anyio.fail_after(10):
            await t.probe.slow_cancelled.wait()
        with anyio.fail_after(10):
            while not (cancelled := await t.gw.audit(method="tools/call")):
                await anyio.lowlevel.checkpoint()
        assert cancelled[0].error == "cancelled"


async def test_a_call_past_the_keepalive_interval_becomes_a_stream_with_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keepalive, "INTERVAL", 0.05)
    monkeypatch.setattr(keepalive, "TICK", 0.01)
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        received = b""
        with anyio.fail_after(10):
            async with http.stream(
                "POST",
                f"{t.gw.url}{SINGLE}",
                content=json.dumps(call(9, "held", {})),
                headers=t.headers("tools/call", "held"),
            ) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"] == "text/event-stream"
                async for chunk in answer.aiter_bytes():
                    received += chunk
                    if b": ping" in received:
                        t.release.set()
        assert received.startswith(b": ping\r\n\r\n")
        [final] = events(received)
        assert final["id"] == 9 and final["result"]["structuredContent"] == {"result": "released"}


async def test_a_tool_list_is_the_same_answer_every_time(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:

        async def listed(path: str, extra_meta: dict[str, Any]) -> httpx2.Response:
            body = {
                "jsonrpc": "2.0",
                "id": "list-1",
                "method": "tools/list",
                "params": {"_meta": {**ENVELOPE, **extra_meta}},
            }
            return await http.post(f"{t.gw.url}{path}", content=json.dumps(body), headers=t.headers("tools/list"))

        for path in (SINGLE, "/mcp"):
            first, again, progress = (
                await listed(path, {}),
                await listed(path, {}),
                await listed(path, {"progressToken": "p"}),
            )
            assert first.content == again.content == progress.content
            assert first.headers["content-type"] == "application/json"
            result = rpc(first)["result"]
            assert (result["ttlMs"], result["cacheScope"], result["resultType"]) == (0, "private", "complete")
            names = {tool["name"] for tool in result["tools"]}
            assert ("echo" if path == SINGLE else "lab__tools__echo") in names
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "x", "_meta": ENVELOPE}}
        refused = await http.post(f"{t.gw.url}{SINGLE}", content=json.dumps(body), headers=t.headers("tools/list"))
        assert refused.status_code == 400 and rpc(refused)["error"]["code"] == -32602


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (call(1, "echo", {"text": "x"}), {"mcp-name": "other"}, 400, -32020),
        (call(1, "echo", {"text": "x"}), {"mcp-method": "tools/list"}, 400, -32020),
        (call(1, "echo", "not an object"), {}, 400, -32602),  # type: ignore[arg-type]
        (call(1, "no_such_tool", {}), {"mcp-name": "no_such_tool"}, 400, -32602),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": ENVELOPE}},
            {"mcp-method": "ping"},
            404,
            -32601,
        ),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}, {}, 400, -32602),
        (call(1, "echo", {"text": "x"}), {"mcp-protocol-version": "2099-01-01"}, 400, -32020),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["echo"]}, {}, 400, -32600),
    ],
)
async def test_refusals_are_precise(
    tmp_path: Path, body: dict[str, Any], headers: dict[str, str], status: int, code: int
) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        answer = await http.post(
            f"{t.gw.url}{SINGLE}", content=json.dumps(body), headers={**t.headers("tools/call", "echo"), **headers}
        )
        assert answer.status_code == status, answer.text
        assert rpc(answer)["error"]["code"] == code, answer.text
        raw = Raw(http, f"{t.gw.url}{SINGLE}", MODERN, t.alice)
        assert rpc(await raw.call("tools/call", {"name": "echo", "arguments": {"text": "on"}}))["result"]

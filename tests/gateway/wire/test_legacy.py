"""The 2025-11-25 wire: a call's answer is an event stream (its log messages, filtered by the session's
`logging/setLevel` choice, then its response); refusals are precise; `notifications/cancelled` cancels a call at the
backend, and only a call of the same session; a session that ends under a call ends its stream; a call holds its
session's idle countdown; a long call gets keepalive comments. Real backends and the production gateway on loopback,
raw HTTP from the test."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.gateway.test_timing import ACCEPT, ALICE, LEGACY, SINGLE, Raw, rpc
from tests.gateway.wire.lab import BOB, HeldLab, held_lab
from virtual_mcp.gateway.wire import keepalive
from virtual_mcp.types import PrincipalKind


@dataclass
class Lab(HeldLab):
    async def session(self, http: httpx2.AsyncClient, listed: bool = True) -> Raw:
        """A raw client with an open 2025-11-25 session of alice's on the single server; `listed`: its tools listed
        once, so the catalog knows them."""
        raw = Raw(http, f"{self.gw.url}{SINGLE}", LEGACY, self.alice)
        await raw.open()
        if listed:
            await raw.call("tools/list")
        return raw

    async def stream(self, raw: Raw, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """POST `body` on `raw`'s session and yield the answer's body as it arrives."""
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {raw.bearer}",
            "mcp-session-id": str(raw.session),
            "mcp-protocol-version": LEGACY,
        }
        async with raw.http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
            assert answer.status_code == 200, answer.status_code
            assert answer.headers["content-type"] == "text/event-stream"
            async for chunk in answer.aiter_bytes():
                yield chunk

    @asynccontextmanager
    async def started(self, raw: Raw, body: dict[str, Any]) -> AsyncIterator[list[bytes]]:
        """POST `body` on `raw`'s session and read its answer in the background; the block runs once the backend has
        started the call, and the answer's bytes are in the list when it ends (once the backend was cancelled)."""
        received: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                async for chunk in self.stream(raw, body):
                    received.append(chunk)

            tg.start_soon(read)
            with anyio.fail_after(10):
                await self.probe.slow_started.wait()
            yield received
            with anyio.fail_after(10):
                await self.probe.slow_cancelled.wait()  # the backend was told


@asynccontextmanager
async def lab(tmp_path: Path, **settings: Any) -> AsyncIterator[Lab]:
    async with held_lab(tmp_path, **settings) as held:
        yield Lab(held.gw, held.backend, held.probe, held.alice, held.release)


def events(body: bytes | str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an event stream, checking each is framed as `event: message` + one data line."""
    text = body.decode() if isinstance(body, bytes) else body
    frames = [frame for frame in text.split("\r\n\r\n") if frame and not frame.startswith(":")]
    assert all(re.fullmatch(r"event: message\r\ndata: [^\r\n]+", frame) for frame in frames), text
    return [json.loads(frame.split("data: ", 1)[1]) for frame in frames]


@pytest.mark.parametrize(
    ("tool", "arguments", "is_error"),
    [
        ("echo", {"text": "quick"}, False),
        ("echo", {"text": 'naïve ✓ \u2028 "quoted"\nnew line'}, False),
        ("point", {"x": 1, "y": 2}, False),
        ("image", {}, False),
        ("embedded", {}, False),
        ("fail", {"reason": "on purpose"}, True),
        ("chatty", {}, False),
    ],
)
async def test_a_call_is_answered_with_an_event_stream_of_its_log_messages_and_result(
    tmp_path: Path, tool: str, arguments: dict[str, Any], is_error: bool
) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        answer = await raw.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/event-stream"
        assert answer.headers["mcp-session-id"] == raw.session
        *logged, final = events(answer.content)
        assert final["id"] == 7 and final["result"]["isError"] is is_error
        if tool == "echo":
            assert final["result"]["structuredContent"] == {"result": arguments["text"]}
            assert "resultType" not in final["result"]
        if tool == "chatty":
            assert [m["params"]["data"]["msg"] for m in logged] == ["debug line", "info line", "warning line"]
            assert all(m["method"] == "notifications/message" for m in logged)
        else:
            assert logged == []
        [call] = await t.gw.audit(method="tools/call")
        assert (call.server, call.tool) == ("lab/tools", tool)


async def test_the_sessions_log_level_filters_what_is_relayed(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http, listed=False)
        assert rpc(await raw.call("logging/setLevel", {"level": "info"}))["result"] == {}
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "chatty", "arguments": {}}}
        answer = await raw.post(body)
        assert "debug line" not in answer.text and "info line" in answer.text and "warning line" in answer.text
        other = await t.session(http, listed=False)  # another session's choice is its own
        assert "debug line" in (await other.post(body)).text


async def test_progress_reaches_the_caller_under_its_own_token(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "mine"}},
        }
        answer = await raw.post(body)
        *progress, final = events(answer.content)
        assert [p["params"]["progressToken"] for p in progress] == ["mine"] * 3
        assert [p["params"]["progress"] for p in progress] == [1.0, 2.0, 3.0]
        assert final["id"] == 4 and "result" in final


async def test_refusals_are_precise_and_the_session_goes_on(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http, listed=False)
        url = raw.url
        bob = await t.gw.token(PrincipalKind.USER, BOB)
        bobs = Raw(http, url, LEGACY, bob)
        await bobs.open()

        def call(params: dict[str, Any]) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": params}

        plain = {"name": "echo", "arguments": {"text": "x"}}
        base = [("accept", ACCEPT), ("content-type", "application/json"), ("authorization", f"Bearer {t.alice}")]
        session = [("mcp-session-id", str(raw.session)), ("mcp-protocol-version", LEGACY)]

        def replaced(name: str, value: str) -> list[tuple[str, str]]:
            return [(k, value if k == name else v) for k, v in base + session]

        cases: list[tuple[str, dict[str, Any], list[tuple[str, str]], int, int | None]] = [
            ("unknown tool", call({"name": "no_such_tool", "arguments": {}}), base + session, 200, -32602),
            ("malformed arguments", call({"name": "echo", "arguments": "text"}), base + session, 200, -32602),
            ("no name", call({"arguments": {}}), base + session, 200, -32602),
            ("no session", call(plain), base, 400, -32600),
            ("unknown session", call(plain), replaced("mcp-session-id", "f" * 32), 404, -32600),
            ("someone else's session", call(plain), replaced("mcp-session-id", str(bobs.session)), 404, -32600),
            ("JSON only", call(plain), replaced("accept", "application/json"), 406, -32600),
            ("not JSON", call(plain), replaced("content-type", "text/plain"), 415, -32600),
            ("JSON second", call(plain), replaced("content-type", "text/plain, application/json"), 415, -32600),
            ("session id twice", call(plain), [*base, *session, ("mcp-session-id", str(bobs.session))], 400, -32600),
            ("bad id", {**call(plain), "id": True}, base + session, 400, -32600),
            ("params not an object", {**call(plain), "params": ["echo"]}, base + session, 400, -32600),
        ]
        for why, body, headers, status, code in cases:
            answer = await http.post(url, content=json.dumps(body), headers=headers)
            assert answer.status_code == status, (why, answer.status_code, answer.text)
            assert rpc(answer)["error"]["code"] == code, (why, answer.text)
        answer = await raw.call("tools/call", plain)
        assert rpc(answer)["result"]["structuredContent"] == {"result": "x"}


async def test_a_backend_that_is_gone_is_a_precise_error_and_audited(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http, listed=False)
        await raw.call("tools/call", {"name": "echo", "arguments": {"text": "warm"}})  # the catalog knows echo now
        t.backend.stop()
        await t.backend.server.shutdown()
        answer = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert rpc(answer)["error"]["code"] == -32010
        [down] = await t.gw.audit(outcome="failed")
        assert (down.server, down.tool) == ("lab/tools", "echo")


async def test_a_session_that_ends_under_a_call_ends_its_stream_without_an_answer(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        async with t.started(raw, body) as received:
            ended = await http.delete(
                raw.url,
                headers={
                    "authorization": f"Bearer {t.alice}",
                    "mcp-session-id": str(raw.session),
                    "mcp-protocol-version": LEGACY,
                },
            )
            assert ended.status_code == 200
        assert b"".join(received) == b""
        assert (await raw.call("ping")).status_code == 404  # the session is gone


async def test_notifications_cancelled_cancels_the_call_at_the_backend(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {"jsonrpc": "2.0", "id": 21, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
        async with t.started(raw, body) as received:
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 21}}
            assert (await raw.post(cancel)).status_code == 202
        [event] = events(b"".join(received))
        assert event == {"jsonrpc": "2.0", "id": 21, "error": {"code": -32800, "message": "Request cancelled"}}
        [cancelled] = await t.gw.audit(method="tools/call")
        assert cancelled.outcome == "failed" and cancelled.error == "cancelled"
        answer = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "after"}})  # the session goes on
        assert rpc(answer)["result"]["structuredContent"] == {"result": "after"}


async def test_a_cancel_from_another_session_or_for_another_id_cancels_nothing(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw, other = await t.session(http), await t.session(http, listed=False)
        answers: list[httpx2.Response] = []
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "held", "arguments": {}}}

        async def call() -> None:
            answers.append(await raw.post(body))

        # "5" and 5 are one id, as in the MCP SDKs. (First: the backend's `held` tool waits on one release event for
        # the whole lab, so the call that is let through must come last.)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "5"}}
            assert (await raw.post(cancel)).status_code == 202
        assert rpc(answers[0])["error"]["code"] == -32800
        with anyio.fail_after(10):
            await t.probe.slow_cancelled.wait()

        t.probe.slow_started, t.probe.slow_cancelled = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            # A cancel is applied before its 202 is sent: these would have cancelled the call by now.
            for sender, request_id in ((other, 5), (raw, 6)):
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
                assert (await sender.post(cancel)).status_code == 202
            t.release.set()
        assert rpc(answers[1])["result"]["structuredContent"] == {"result": "released"}
        assert not t.probe.slow_cancelled.is_set()


async def test_a_call_outlasting_the_idle_time_keeps_its_session(tmp_path: Path) -> None:
    async with lab(tmp_path, limits={"session_idle_seconds": 0.2}) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        idle_one = await t.session(http, listed=False)  # opened after `raw`: it expires no sooner than `raw` would
        # Held from its opening on: it has only 0.2 s to live, which a busy machine could spend before a later look.
        expiring = t.gw.runtime.sessions[SINGLE].find(str(idle_one.session), f"user:{ALICE}")
        assert expiring is not None
        body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        answers: list[httpx2.Response] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await raw.post(body))

            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            # The other session, with nothing in flight, expires meanwhile: the held one outlives its idle time.
            with anyio.fail_after(10):
                await expiring.closed.wait()
            t.release.set()
        assert rpc(answers[0])["result"]["structuredContent"] == {"result": "released"}
        assert (await raw.call("ping")).status_code == 200  # the countdown restarted when the call ended


async def test_a_long_call_gets_keepalive_comments_until_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keepalive, "INTERVAL", 0.05)
    monkeypatch.setattr(keepalive, "TICK", 0.01)
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        received = b""
        with anyio.fail_after(10):
            async for chunk in t.stream(raw, body):
                received += chunk
                if received.count(b": ping\r\n\r\n") >= 2:
                    t.release.set()
        assert re.match(rb"(: ping\r\n\r\n){2,}event: message\r\n", received)
        [final] = events(received)
        assert final["id"] == 4 and final["result"]["structuredContent"] == {"result": "released"}


async def test_concurrent_openings_within_the_quota_all_succeed_and_one_past_it_is_refused(tmp_path: Path) -> None:
    quota = 60
    async with lab(tmp_path, limits={"sessions_per_principal": quota}) as t, httpx2.AsyncClient() as http:
        opened: list[Raw] = []

        async def open_one() -> None:
            raw = Raw(http, f"{t.gw.url}{SINGLE}", LEGACY, t.alice)
            await raw.open()
            opened.append(raw)

        async with anyio.create_task_group() as tg:
            for _ in range(quota):
                tg.start_soon(open_one)  # an opening counts once, whether it is under way or done
        assert len({raw.session for raw in opened}) == quota
        refused = Raw(http, f"{t.gw.url}{SINGLE}", LEGACY, t.alice)
        params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        answer = await refused.call("initialize", params)
        assert answer.status_code == 429 and "you hold 60 of at most 60" in answer.text
        ended = await http.delete(
            opened[0].url, headers={"authorization": f"Bearer {t.alice}", "mcp-session-id": str(opened[0].session)}
        )
        assert ended.status_code == 200
        await refused.open()  # a place is free again


async def test_a_request_id_already_in_flight_on_the_session_is_refused_and_the_first_call_goes_on(
    tmp_path: Path,
) -> None:
    async with lab(tmp_path) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        answers: list[httpx2.Response] = []

        async def first() -> None:
            answers.append(await raw.post(body))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            again = await raw.post({**body, "id": "9"})  # "9" and 9 are one id
            [refused] = events(again.content)
            assert refused["error"] == {
                "code": -32600,
                "message": "a request with this id is in flight on this session",
            }
            t.release.set()
        assert rpc(answers[0])["result"]["structuredContent"] == {"result": "released"}
        assert not t.probe.slow_cancelled.is_set()

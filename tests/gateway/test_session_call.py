"""The 2025-11-25 `tools/call` fast path: which session requests it takes and which it leaves to the SDK path
(observed with a spy on its answer), that both write the same event stream byte for byte, that log messages and the
session's `logging/setLevel` choice reach the caller as on the SDK path, that `notifications/cancelled` cancels a
call at the backend, and that a call holds its session's idle countdown. Real backends and the production gateway
on loopback, raw HTTP from the test."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.server.streamable_http import StreamableHTTPServerTransport

from tests.backends import Probe, build_lab
from tests.gateway.test_timing import ACCEPT, ALICE, CONFIG, IDENTITIES, LEGACY, SINGLE, Raw, rpc
from tests.security_support import SecureGateway, secure_gateway
from tests.support import Served, serve
from virtual_mcp.gateway import keepalive
from virtual_mcp.gateway.session_call import SessionToolCalls
from virtual_mcp.types import PrincipalKind

BOB = "bob@northwind.example"
# Per response, not per path: when and for which request it was answered.
PER_RESPONSE = {"date", "server", "x-request-id", "server-timing", "transfer-encoding", "content-length"}


@dataclass
class Lab:
    gw: SecureGateway
    backend: Served
    probe: Probe
    alice: str
    taken: list[bool]  # what the fast path answered for each request it was offered
    transports: list[StreamableHTTPServerTransport]
    release: anyio.Event  # lets the backend's `held` tool answer
    sdk_only: list[bool] = field(default_factory=list)  # [True]: the fast path is switched off

    async def session(self, http: httpx2.AsyncClient, listed: bool = True) -> Raw:
        """A raw client with an open 2025-11-25 session of alice's on the single server; `listed`: its tools listed
        once, so the catalog knows them."""
        raw = Raw(http, f"{self.gw.url}{SINGLE}", LEGACY, self.alice)
        await raw.open()
        if listed:
            await raw.call("tools/list")
        return raw

    async def stream(self, raw: Raw, body: dict[str, Any], session: str | None = None) -> AsyncIterator[bytes]:
        """POST `body` on `raw`'s session (or `session`) and yield the answer's body as it arrives."""
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {raw.bearer}",
            "mcp-session-id": session or str(raw.session),
            "mcp-protocol-version": LEGACY,
        }
        async with raw.http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
            assert answer.status_code == 200, answer.status_code
            assert answer.headers["content-type"] == "text/event-stream"
            async for chunk in answer.aiter_bytes():
                yield chunk


@asynccontextmanager
async def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    taken: list[bool] = []
    sdk_only: list[bool] = []
    original = SessionToolCalls.__call__

    async def spy(self: SessionToolCalls, message: Any, *args: Any) -> bool:
        if sdk_only and message.get("method") == "tools/call":
            return False
        answered = await original(self, message, *args)
        if message.get("method") == "tools/call":
            taken.append(answered)
        return answered

    monkeypatch.setattr(SessionToolCalls, "__call__", spy)
    transports: list[StreamableHTTPServerTransport] = []
    original_init = StreamableHTTPServerTransport.__init__

    def recorded(self: StreamableHTTPServerTransport, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        transports.append(self)

    monkeypatch.setattr(StreamableHTTPServerTransport, "__init__", recorded)
    probe = Probe()
    release = anyio.Event()
    backend_app = build_lab(probe)

    @backend_app.tool
    async def held() -> str:
        """Answers once the test lets it (or is cancelled)."""
        probe.slow_started.set()
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            probe.slow_cancelled.set()
            raise
        return "released"

    async with serve(backend_app.http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(CONFIG.format(url=backend.url))
        (config / "ids.yaml").write_text(IDENTITIES.replace(f"[{ALICE}]", f"[{ALICE}, {BOB}]"))
        async with secure_gateway(config, tmp_path / "data") as gw:
            alice = await gw.token(PrincipalKind.USER, ALICE)
            yield Lab(gw, backend, probe, alice, taken, transports, release, sdk_only)


def comparable(response: httpx2.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in PER_RESPONSE]
    return response.status_code, headers, response.content


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("echo", {"text": "quick"}),
        ("echo", {"text": 'naïve ✓ \u2028 "quoted"\nnew line'}),
        ("point", {"x": 1, "y": 2}),
        ("image", {}),
        ("embedded", {}),
        ("fail", {"reason": "on purpose"}),
        ("chatty", {}),
    ],
)
async def test_a_plain_call_takes_the_fast_path_and_writes_the_sdks_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str, arguments: dict[str, Any]
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        fast = await raw.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        )
        assert t.taken == [True]
        t.sdk_only.append(True)
        slow = await raw.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        )
        assert t.taken == [True]  # the spy answered False before the fast path saw it
        assert comparable(fast) == comparable(slow)
        assert fast.headers["content-type"] == "text/event-stream"
        assert fast.headers["mcp-session-id"] == raw.session
        if tool == "chatty":
            logged = [json.loads(line[5:]) for line in fast.text.splitlines() if line.startswith("data:")]
            assert [m["params"]["data"]["msg"] for m in logged if m.get("method")] == [
                "debug line",
                "info line",
                "warning line",
            ]
        calls = await t.gw.audit(method="tools/call")
        assert [(c.server, c.tool) for c in calls] == [("lab/tools", tool)] * 2
        assert calls[0].outcome == calls[1].outcome


async def test_the_sessions_log_level_filters_what_is_relayed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http, listed=False)
        assert rpc(await raw.call("logging/setLevel", {"level": "info"}))["result"] == {}
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "chatty", "arguments": {}}}
        fast = await raw.post(body)
        t.sdk_only.append(True)
        slow = await raw.post(body)
        assert t.taken == [True]
        assert comparable(fast) == comparable(slow)
        assert "debug line" not in fast.text and "info line" in fast.text and "warning line" in fast.text


async def test_everything_else_is_left_to_the_sdk_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
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

        cases: list[tuple[str, dict[str, Any], list[tuple[str, str]], set[int]]] = [
            ("wants progress", call({**plain, "_meta": {"progressToken": "p"}}), base + session, {200}),
            ("unknown tool", call({"name": "no_such_tool", "arguments": {}}), base + session, {200}),
            ("malformed arguments", call({"name": "echo", "arguments": "text"}), base + session, {200}),
            ("no name", call({"arguments": {}}), base + session, {200}),
            ("no session", call(plain), base, {400}),
            ("unknown session", call(plain), replaced("mcp-session-id", "f" * 32), {404}),
            ("someone else's session", call(plain), replaced("mcp-session-id", str(bobs.session)), {404}),
            ("JSON only", call(plain), replaced("accept", "application/json"), {406}),
            # Refused by the front door before any path sees them (a precise 415 or 400).
            ("not JSON", call(plain), replaced("content-type", "text/plain"), {415}),
            ("JSON second", call(plain), replaced("content-type", "text/plain, application/json"), {415}),
            ("session id twice", call(plain), [*base, *session, ("mcp-session-id", str(bobs.session))], {400}),
            ("bad id", {**call(plain), "id": True}, base + session, {400}),
        ]
        front_door = {"not JSON", "JSON second", "session id twice", "bad id"}
        for why, body, headers, statuses in cases:
            offered = len(t.taken)
            answer = await http.post(url, content=json.dumps(body), headers=headers)
            # Offered to the fast path, which left it alone (or never offered: refused at the front door).
            assert t.taken[offered:] == ([] if why in front_door else [False]), why
            assert answer.status_code in statuses, (why, answer.status_code, answer.text)
        # And the same session's plain call is still the fast path's.
        answer = await raw.call("tools/call", plain)
        assert t.taken[-1] is True and rpc(answer)["result"]["structuredContent"] == {"result": "x"}


async def test_a_backend_that_is_gone_is_the_same_error_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http, listed=False)
        await raw.call("tools/call", {"name": "echo", "arguments": {"text": "warm"}})  # the catalog knows echo now
        t.backend.stop()
        await t.backend.server.shutdown()
        body = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}},
        }
        fast = await raw.post(body)
        t.sdk_only.append(True)
        slow = await raw.post(body)
        assert t.taken == [True, True]
        assert comparable(fast) == comparable(slow)
        assert rpc(fast)["error"]["code"] == -32010
        down = await t.gw.audit(outcome="failed")
        assert [(d.server, d.tool) for d in down] == [("lab/tools", "echo")] * 2


async def test_a_session_that_ends_under_a_call_ends_its_stream_as_on_the_sdk_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        streams: list[bytes] = []
        for sdk_only in (False, True):
            if sdk_only:
                t.sdk_only.append(True)
            raw = await t.session(http)
            t.probe.slow_started, t.probe.slow_cancelled = anyio.Event(), anyio.Event()
            body = {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
            received: list[bytes] = []
            async with anyio.create_task_group() as tg:

                async def read(raw: Raw, body: dict[str, Any], received: list[bytes]) -> None:
                    async for chunk in t.stream(raw, body):
                        received.append(chunk)

                tg.start_soon(read, raw, body, received)
                with anyio.fail_after(10):
                    await t.probe.slow_started.wait()
                ended = await http.delete(
                    raw.url,
                    headers={
                        "authorization": f"Bearer {t.alice}",
                        "mcp-session-id": str(raw.session),
                        "mcp-protocol-version": LEGACY,
                    },
                )
                assert ended.status_code == 200
                with anyio.fail_after(10):
                    await t.probe.slow_cancelled.wait()  # the backend was told
            streams.append(b"".join(received))
        assert t.taken == [True]
        fast, slow = streams
        assert fast == slow == b""  # the stream ends without an answer on both paths


async def test_notifications_cancelled_cancels_the_call_at_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        streams: list[bytes] = []

        async def held(request_id: int) -> None:
            probe_started = anyio.Event()
            t.probe.slow_started = probe_started
            t.probe.slow_cancelled = anyio.Event()
            body = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {}},
            }
            headers = {
                "accept": ACCEPT,
                "content-type": "application/json",
                "authorization": f"Bearer {t.alice}",
                "mcp-session-id": str(raw.session),
                "mcp-protocol-version": LEGACY,
            }
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    async with http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
                        assert answer.status_code == 200
                        streams.append(b"".join([chunk async for chunk in answer.aiter_bytes()]))

                tg.start_soon(read)
                with anyio.fail_after(10):
                    await probe_started.wait()
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
                assert (await raw.post(cancel)).status_code == 202
                with anyio.fail_after(10):
                    await t.probe.slow_cancelled.wait()

        await held(21)
        assert t.taken == [True]
        t.sdk_only.append(True)
        await held(21)
        fast, slow = streams
        assert fast == slow
        [event] = [json.loads(line[5:]) for line in fast.decode().splitlines() if line.startswith("data:")]
        assert event == {"jsonrpc": "2.0", "id": 21, "error": {"code": -32800, "message": "Request cancelled"}}
        # The session goes on.
        t.sdk_only.clear()
        answer = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "after"}})
        assert t.taken[-1] is True and rpc(answer)["result"]["structuredContent"] == {"result": "after"}


async def test_a_cancel_from_another_session_or_for_another_id_cancels_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw, other = await t.session(http), await t.session(http, listed=False)
        answers: list[httpx2.Response] = []
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                answers.append(await raw.post(body))

            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            # A cancel is applied before its 202 is sent: these would have cancelled the call by now.
            for sender, request_id in ((other, 5), (raw, 6)):
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
                assert (await sender.post(cancel)).status_code == 202
            t.release.set()
        assert rpc(answers[0])["result"]["structuredContent"] == {"result": "released"}
        assert not t.probe.slow_cancelled.is_set()

        # "5" and 5 are one id, as in the SDK's dispatcher.
        t.release, t.probe.slow_started = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "5"}}
            assert (await raw.post(cancel)).status_code == 202
        assert rpc(answers[1])["error"]["code"] == -32800
        assert t.taken == [True, True]


async def test_a_call_holds_the_sessions_idle_countdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        [transport] = [tr for tr in t.transports if tr.mcp_session_id == raw.session]
        idle = transport.idle_scope
        assert idle is not None and math.isfinite(idle.deadline)
        before = idle.deadline
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await raw.post({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "held"}})

            tg.start_soon(call)
            with anyio.fail_after(10):
                await t.probe.slow_started.wait()
            assert idle.deadline == math.inf  # no expiry while the call runs
            assert transport._requests_in_flight == 1
            t.release.set()  # the call ends by itself: no other request touches the countdown
        assert t.taken == [True]
        assert transport._requests_in_flight == 0
        assert math.isfinite(idle.deadline) and idle.deadline > before  # restarted when the call ended


async def test_a_long_call_gets_keepalive_comments_until_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keepalive, "INTERVAL", 0.05)
    monkeypatch.setattr(keepalive, "TICK", 0.01)
    async with lab(tmp_path, monkeypatch) as t, httpx2.AsyncClient() as http:
        raw = await t.session(http)
        body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "held", "arguments": {}}}
        received = b""
        with anyio.fail_after(10):
            async for chunk in t.stream(raw, body):
                received += chunk
                if received.count(b": ping - ") >= 2:
                    t.release.set()
        assert t.taken == [True]
        ping = rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\r\n\r\n"  # sse-starlette's
        assert re.match(rb"(" + ping + rb"){2,}event: message\r\n", received)
        [final] = [json.loads(line[5:]) for line in received.decode().splitlines() if line.startswith("data:")]
        assert final["id"] == 4 and final["result"]["structuredContent"] == {"result": "released"}

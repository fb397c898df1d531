"""What a backend asks of its caller while a call runs (elicitation, sampling, roots) reaches that caller and no
other, whichever era each side speaks, and the answer goes back: a 2025-11-25 backend's request pushed on the call's
stream, a 2026-07-28 backend's `input_required`; a 2025-11-25 caller asked by a pushed request, a 2026-07-28 caller
by `input_required` and its retry. Real fastmcp backends and clients through the gateway on loopback; raw HTTP where
a test needs to send what no well-behaved client sends."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError

from tests.asking_backend import NAME_STATE, asking_backend
from tests.gateway.test_timing import LEGACY, MODERN, Raw
from tests.gateway.wire.test_legacy import events
from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import secure_gateway
from tests.support import LOCAL_USER, REPO, LegacyOnly, Served, gateway, serve, write_config
from virtual_mcp.types import PrincipalKind

ERAS = ("legacy", "modern")
MODES = ("legacy", "2026-07-28")
ELICITS: dict[str, Any] = {"elicitation": {"form": {}}}


@asynccontextmanager
async def backends() -> AsyncIterator[dict[str, Served]]:
    async with (
        serve(LegacyOnly(asking_backend().http_app(path="/mcp"))) as legacy,
        serve(asking_backend().http_app(path="/mcp")) as modern,
    ):
        yield {"legacy": legacy, "modern": modern}


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Served]:
    async with backends() as served:
        config = write_config(tmp_path / "servers.d", {era: s.url for era, s in served.items()})
        async with gateway(config) as gw:
            yield gw


class Person:
    """A client's handlers: what a person (and their model, their workspace) answers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[str] = []

    async def elicit(self, message: str, response_type: Any, params: Any, context: Any) -> Any:
        self.asked.append(message)
        return {"name": self.name}

    async def sample(self, messages: Any, params: Any, context: Any) -> str:
        self.asked.append("sampling")
        return f"{self.name}'s summary"

    def client(self, url: str, mode: str, **options: Any) -> Client[Any]:
        return Client(
            url,
            mode=mode,
            elicitation_handler=self.elicit,
            sampling_handler=self.sample,
            roots=["file:///work/" + self.name],
            **options,
        )


def text(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("era", ERAS)
async def test_elicitation_sampling_and_roots_cross_the_gateway_in_every_era_combination(
    tmp_path: Path, era: str, mode: str
) -> None:
    ada = Person("Ada")
    async with lab(tmp_path) as gw, ada.client(f"{gw.url}/mcp-server/lab/{era}/server", mode) as client:
        assert text(await client.call_tool("ask_name", {})) == "hello Ada"
        assert text(await client.call_tool("ask_twice", {})) == "Ada Ada"
        assert text(await client.call_tool("summarize", {"text": "a long story"})) == "Ada's summary"
        assert json.loads(text(await client.call_tool("roots", {}))) == ["file:///work/Ada"]
        assert ada.asked == ["What is your name?", "Your first name?", "Your last name?", "sampling"]
        # The same through /mcp, under the namespaced name.
        assert text(await Client.call_tool(client, "ask_name", {})) == "hello Ada"
    async with lab(tmp_path / "again") as gw, ada.client(f"{gw.url}/mcp", mode) as aggregate:
        assert text(await aggregate.call_tool(f"lab__{era}__ask_name", {})) == "hello Ada"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("era", ERAS)
async def test_a_caller_that_declared_no_capability_is_never_asked(tmp_path: Path, era: str, mode: str) -> None:
    """The backend is told (a 2025-11-25 one gets -32601 naming the capability), or, for a 2026-07-28 backend's
    `input_required` that the caller cannot answer, the call fails saying why."""
    async with lab(tmp_path) as gw, Client(f"{gw.url}/mcp-server/lab/{era}/server", mode=mode) as client:
        if era == "legacy":
            result = await client.call_tool("ask_name", {}, raise_on_error=False)
            assert "did not declare the client capability elicitation.form" in text(result)
        else:
            with pytest.raises(MCPError):
                await client.call_tool("ask_name", {})
        assert text(await client.call_tool("bad_form", {})).startswith("refused")  # and the gateway serves on


@pytest.mark.parametrize("mode", MODES)
async def test_a_malformed_form_never_reaches_the_caller(tmp_path: Path, mode: str) -> None:
    ada = Person("Ada")
    async with lab(tmp_path) as gw, ada.client(f"{gw.url}/mcp-server/lab/legacy/server", mode) as client:
        told = text(await client.call_tool("bad_form", {}))
        assert told == (
            "refused: malformed elicitation/create request: requestedSchema field 'address' is not a primitive field"
        )
        assert ada.asked == []


async def test_two_callers_on_one_shared_backend_session_each_answer_their_own_question(tmp_path: Path) -> None:
    """Alice (2025-11-25) and Bob (2026-07-28) call at once over one shared backend session; each question goes to
    the caller whose call asked it."""
    alice, bob = "alice@northwind.example", "bob@northwind.example"
    async with backends() as served:
        config = tmp_path / "servers.d"
        config.mkdir()
        shared = remote("shared", served["legacy"].url, upstream_session="shared")
        (config / "lab.yaml").write_text(group("lab", shared))
        write_identities(config, {PLATFORM: [alice, bob]})
        async with secure_gateway(config, tmp_path / "data") as gw:
            both_asked = anyio.Event()
            asked: list[str] = []

            class Waiting(Person):
                async def elicit(self, message: str, response_type: Any, params: Any, context: Any) -> Any:
                    asked.append(self.name)
                    if len(asked) == 2:
                        both_asked.set()
                    with anyio.fail_after(10):
                        await both_asked.wait()  # neither answers before both are asked
                    return {"name": self.name}

            results: dict[str, str] = {}

            async def call(user: str, mode: str) -> None:
                token = await gw.token(PrincipalKind.USER, user)
                url = f"{gw.url}/mcp-server/lab/shared/server"
                person = Waiting(user.split("@")[0])
                transport = StreamableHttpTransport(url, auth=token)
                async with Client(transport, mode=mode, elicitation_handler=person.elicit) as client:
                    results[user] = text(await client.call_tool("ask_name", {}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, alice, "legacy")
                tg.start_soon(call, bob, "2026-07-28")
            assert results == {alice: "hello alice", bob: "hello bob"}
            assert gw.runtime.pool.open_sessions <= 3  # the shared one (and the servers' own), not one per caller


# -- what no well-behaved client sends ------------------------------------------------------------------------------


async def _asked(raw: Raw, body: dict[str, Any], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST `body` on `raw`'s session; when the gateway asks, POST each of `answers` (the first with the question's
    id, unless it has one) and keep the HTTP status of each; the events of the call's stream."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-session-id": str(raw.session),
        "mcp-protocol-version": LEGACY,
    }
    seen: list[dict[str, Any]] = []
    async with raw.http.stream("POST", raw.url, content=json.dumps(body), headers=headers) as answer:
        buffer = ""
        async for chunk in answer.aiter_text():
            buffer += chunk
            while "\r\n\r\n" in buffer:
                frame, buffer = buffer.split("\r\n\r\n", 1)
                for message in events(frame + "\r\n\r\n"):
                    seen.append(message)
                    if message.get("method") == "elicitation/create":
                        for reply in answers:
                            sent = await raw.post({"jsonrpc": "2.0", "id": message["id"], **reply})
                            reply["status"], reply["told"] = sent.status_code, sent.text
    return seen


async def test_a_legacy_caller_answering_what_it_was_not_asked_is_refused(tmp_path: Path) -> None:
    async with lab(tmp_path) as gw, httpx2.AsyncClient(timeout=10) as http:
        raw = Raw(http, f"{gw.url}/mcp-server/lab/legacy/server", LEGACY, "")
        raw.capabilities = ELICITS
        await raw.open()
        # Nothing asked: an answer is refused, naming the id.
        stray = await raw.post({"jsonrpc": "2.0", "id": "vmcp-ask-0000", "result": {"action": "cancel"}})
        assert stray.status_code == 400 and "no question with id 'vmcp-ask-0000'" in stray.text
        # Asked once, answered twice: the second is refused; the call has the first.
        answers: list[dict[str, Any]] = [
            {"result": {"action": "accept", "content": {"name": "Ada"}}},
            {"result": {"action": "decline"}},
        ]
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask_name", "arguments": {}}}
        seen = await _asked(raw, body, answers)
        assert [a["status"] for a in answers] == [202, 400]
        assert seen[-1]["result"]["content"][0]["text"] == "hello Ada"
        # Another session of the same caller cannot answer this session's question.
        other = Raw(http, raw.url, LEGACY, "")
        await other.open()
        answers = [{"result": {"action": "accept", "content": {"name": "Ada"}}}]
        body["id"] = 6
        raw_other_answers: list[int] = []

        class Cross(Raw):
            async def post(self, body: dict[str, Any]) -> httpx2.Response:
                if "result" in body and body["result"].get("action") == "accept" and not raw_other_answers:
                    # First the other session tries; then the right one answers.
                    crossed = await other.post(body)
                    raw_other_answers.append(crossed.status_code)
                return await super().post(body)

        cross = Cross(http, raw.url, LEGACY, "")
        cross.session = raw.session
        seen = await _asked(cross, body, answers)
        assert raw_other_answers == [400]
        assert seen[-1]["result"]["content"][0]["text"] == "hello Ada"
        # A malformed answer: the backend is told, not the gateway broken.
        body["id"] = 7
        seen = await _asked(raw, body, [{"result": {"action": "perhaps"}}])
        assert "the caller's answer to elicitation/create is malformed" in seen[-1]["result"]["content"][0]["text"]


async def _modern(raw: Raw, arguments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    answer = await raw.call("tools/call", {"name": "ask_name", "arguments": arguments, **extra})
    message = dict(json.loads(answer.text))
    assert answer.status_code == (400 if "error" in message else 200), answer.text
    return message


async def test_a_request_state_is_the_gateways_bound_to_its_request_and_used_once(tmp_path: Path) -> None:
    async with lab(tmp_path) as gw, httpx2.AsyncClient(timeout=10) as http:
        for era in ERAS:
            raw = Raw(http, f"{gw.url}/mcp-server/lab/{era}/server", MODERN, "")
            raw.capabilities = ELICITS
            first = (await _modern(raw, {}))["result"]
            assert first["resultType"] == "input_required"
            state, (key,) = first["requestState"], first["inputRequests"]
            assert state.startswith("vmcp1.") and NAME_STATE not in state  # the backend's own state is sealed inside
            answer = {key: {"action": "accept", "content": {"name": "Ada"}}}
            tampered = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
            refused = (await _modern(raw, {}, inputResponses=answer, requestState=tampered))["error"]
            assert refused["code"] == -32602 and "altered" in refused["message"]
            other = (await _modern(raw, {"x": 1}, inputResponses=answer, requestState=state))["error"]
            assert "other arguments" in other["message"]
            done = (await _modern(raw, {}, inputResponses=answer, requestState=state))["result"]
            assert done["content"][0]["text"] == "hello Ada"
            replayed = (await _modern(raw, {}, inputResponses=answer, requestState=state))["error"]
            assert "used already" in replayed["message"]
            orphan = (await _modern(raw, {}, inputResponses=answer))["error"]
            assert "without the requestState" in orphan["message"]
            foreign = (await _modern(raw, {}, inputResponses=answer, requestState=NAME_STATE))["error"]
            assert "not issued by this gateway" in foreign["message"]


async def test_a_question_after_its_call_was_answered_is_refused_and_reaches_nobody(tmp_path: Path) -> None:
    ada = Person("Ada")
    server = remote("late", "unused", upstream_session="per_principal")
    del server["url"]
    server.update(transport="stdio", command=sys.executable, args=["-m", "tests.stdio_late_asker"], cwd=str(REPO))
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "lab.yaml").write_text(group("lab", server))
    write_identities(config, {PLATFORM: [LOCAL_USER]})
    async with gateway(config, list_deadline_seconds=30) as gw:
        for mode in MODES:
            async with ada.client(f"{gw.url}/mcp-server/lab/late/server", mode) as client:
                assert text(await client.call_tool("late", {})) == "answered"
                told = json.loads(text(await client.call_tool("told", {})))
                assert told["error"]["code"] == -32601 and "no caller" in told["error"]["message"]
        assert ada.asked == []


async def test_a_legacy_callers_session_ending_under_a_question_ends_it(tmp_path: Path) -> None:
    """The caller goes (its session is deleted) while asked: the call ends, the question's answer is refused
    afterwards, nothing reaches anyone else, and the gateway serves on."""
    async with lab(tmp_path) as gw, httpx2.AsyncClient(timeout=10) as http:
        raw = Raw(http, f"{gw.url}/mcp-server/lab/legacy/server", LEGACY, "")
        raw.capabilities = ELICITS
        await raw.open()
        asked: list[str] = []

        class Leaving(Raw):
            async def post(self, body: dict[str, Any]) -> httpx2.Response:
                asked.append(str(body["id"]))
                ended = await http.delete(self.url, headers={"mcp-session-id": str(self.session)})
                assert ended.status_code == 200
                return ended

        leaving = Leaving(http, raw.url, LEGACY, "")
        leaving.session = raw.session
        body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "ask_name", "arguments": {}}}
        seen = await _asked(leaving, body, [{"result": {"action": "accept", "content": {"name": "Ada"}}}])
        # The stream ended without an answer, the question withdrawn.
        assert [m.get("method") for m in seen] == ["elicitation/create", "notifications/cancelled"]
        assert seen[1]["params"]["requestId"] == seen[0]["id"]
        other = Raw(http, raw.url, LEGACY, "")
        other.capabilities = ELICITS
        await other.open()
        late = await other.post({"jsonrpc": "2.0", "id": asked[0], "result": {"action": "accept", "content": {}}})
        assert late.status_code == 400 and asked[0] in late.text
        done = await _asked(other, {**body, "id": 10}, [{"result": {"action": "accept", "content": {"name": "Bo"}}}])
        assert done[-1]["result"]["content"][0]["text"] == "hello Bo"


async def test_a_question_the_backend_withdraws_is_withdrawn_from_the_caller(tmp_path: Path) -> None:
    """A 2025-11-25 backend cancels its own elicitation while the caller is asked: the caller is told (its handler
    is cancelled), no answer is sent for it, and the call goes on to its end."""
    async with lab(tmp_path) as gw:
        asked, stopped = anyio.Event(), anyio.Event()

        async def waits(message: str, response_type: Any, params: Any, context: Any) -> Any:
            asked.set()
            try:
                await anyio.sleep_forever()  # a person who has not answered yet
            finally:
                stopped.set()

        url = f"{gw.url}/mcp-server/lab/legacy/server"
        outcome: list[str] = []
        async with Client(url, mode="legacy", elicitation_handler=waits) as caller, Client(url, mode="legacy") as other:

            async def call() -> None:
                outcome.append(text(await caller.call_tool("ask_then_withdraw", {})))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(10):
                    await asked.wait()
                assert text(await other.call_tool("withdraw_question", {})) == "done"
                with anyio.fail_after(10):
                    await stopped.wait()
        assert outcome == ["withdrawn"]

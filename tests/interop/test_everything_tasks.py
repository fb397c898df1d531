"""Task-augmented tool calls (2025-11-25 tasks) with the reference server, directly and through the gateway: the
same lifecycle (CreateTaskResult, `tasks/get`, the elicitation asked while `input_required`, answered during
`tasks/result`, the final result, `tasks/cancel`), with the gateway's own task ids; another principal's
`tasks/get` of the same id learns nothing; a 2026-07-28 caller is offered no task support. A hand-made client, so
each answer is seen as sent (the SDK clients have no tasks API)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.interop.everything import everything_server
from tests.interop.test_everything import timeless
from tests.lab_config import ALICE, BOB, PLATFORM, group, remote, write_identities
from tests.security_support import secure_gateway
from virtual_mcp.types import PrincipalKind

RESEARCH = "simulate-research-query"
RELATED = "io.modelcontextprotocol/related-task"
Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Session:
    """A 2025-11-25 client session over raw HTTP: requests answered as JSON or as an event stream, the server's
    requests on that stream answered by `answer`."""

    def __init__(self, http: httpx2.AsyncClient, url: str, bearer: str | None = None) -> None:
        self.http, self.url, self.bearer = http, url, bearer
        self.session_id: str | None = None
        self._ids = itertools.count(1)
        self.asked: list[dict[str, Any]] = []
        self.asked_about: list[str] = []  # the task each question named

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if self.bearer:
            headers["authorization"] = f"Bearer {self.bearer}"
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = "2025-11-25"
        return headers

    async def open(self) -> dict[str, Any]:
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {"form": {}}},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        result = await self.request("initialize", params)
        await self.http.post(
            self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self._headers()
        )
        return result

    async def request(self, method: str, params: dict[str, Any], answer: Answer | None = None) -> dict[str, Any]:
        """The response message (`result` or `error`)."""
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        async with self.http.stream("POST", self.url, json=body, headers=self._headers()) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            if self.session_id is None and "mcp-session-id" in response.headers:
                self.session_id = response.headers["mcp-session-id"]
            if response.headers["content-type"].startswith("application/json"):
                return dict(json.loads(await response.aread()))
            async for line in response.aiter_lines():
                if not line.startswith("data:") or not line[5:].strip():
                    continue
                message = json.loads(line[5:])
                if message.get("id") == request_id and "method" not in message:
                    return dict(message)
                if "method" in message and "id" in message:  # the server asks its client
                    self.asked.append(timeless(message["params"]))
                    self.asked_about.append(message["params"]["_meta"][RELATED]["taskId"])
                    assert answer is not None, message
                    reply = {"jsonrpc": "2.0", "id": message["id"], "result": await answer(message)}
                    await self.http.post(self.url, json=reply, headers=self._headers())
        raise AssertionError(f"no answer to {method}")


async def clarify(message: dict[str, Any]) -> dict[str, Any]:
    """The person picks the first interpretation offered."""
    schema = message["params"]["requestedSchema"]["properties"]["interpretation"]
    return {"action": "accept", "content": {"interpretation": schema["oneOf"][0]["const"]}}


async def lifecycle(session: Session) -> dict[str, Any]:
    """One task through its whole life, and a second one cancelled: what the caller saw, ids aside."""
    initialized = await session.open()
    assert initialized["result"]["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}
    tools = {t["name"]: t for t in (await session.request("tools/list", {}))["result"]["tools"]}
    arguments = {"topic": "gateways", "ambiguous": True}
    created = (await session.request("tools/call", {"name": RESEARCH, "arguments": arguments, "task": {}}))["result"]
    task_id = created["task"]["taskId"]
    polled = (await session.request("tasks/get", {"taskId": task_id}))["result"]
    final = (await session.request("tasks/result", {"taskId": task_id}, clarify))["result"]
    done = (await session.request("tasks/get", {"taskId": task_id}))["result"]
    second = await session.request("tools/call", {"name": RESEARCH, "arguments": {"topic": "x"}, "task": {}})
    second_id = second["result"]["task"]["taskId"]
    cancelled = (await session.request("tasks/cancel", {"taskId": second_id}))["result"]
    assert session.asked_about == [task_id]  # the question names the task by the id this caller knows
    for question in session.asked:
        question["_meta"][RELATED]["taskId"] = "<task>"
    return {
        "execution": tools[RESEARCH]["execution"],
        "created": (created["task"]["status"], polled["taskId"] == task_id, polled["status"]),
        "asked": session.asked,
        "final": timeless({k: v for k, v in final.items() if k != "_meta"}),
        "done": (done["taskId"] == task_id, done["status"]),
        "cancelled": (cancelled["taskId"] == second_id, cancelled["status"]),
        "ids": (task_id, second_id),
    }


async def test_a_task_lives_through_the_gateway_as_it_does_directly(tmp_path: Path) -> None:
    async with everything_server() as everything, httpx2.AsyncClient(timeout=30) as http:
        expected = await lifecycle(Session(http, everything.url))
        assert expected["created"][0] == "working" and expected["done"] == (True, "completed")
        assert "Clarification" in json.dumps(expected["final"]) and len(expected["asked"]) == 1
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group("lab", remote("everything", everything.url.removesuffix("/mcp"))))
        write_identities(config, {PLATFORM: [ALICE, BOB]})
        async with secure_gateway(config, tmp_path / "data") as gw:
            url = f"{gw.url}/mcp-server/lab/everything/server"
            alice, bob = await gw.token(PrincipalKind.USER, ALICE), await gw.token(PrincipalKind.USER, BOB)
            seen = await lifecycle(Session(http, url, alice))
            direct_ids, gateway_ids = expected.pop("ids"), seen.pop("ids")
            assert seen == expected, json.dumps({"seen": seen, "expected": expected}, indent=1)[:6000]
            assert not set(direct_ids) & set(gateway_ids)  # the gateway's own ids, not the backend's
            # Bob asks about Alice's task: no such task, as for one that never existed.
            bobs = Session(http, url, bob)
            await bobs.open()
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                error = (await bobs.request(method, {"taskId": gateway_ids[0]}))["error"]
                assert error["code"] == -32602 and "no such task" in error["message"]
            never = (await bobs.request("tasks/get", {"taskId": "not-a-task"}))["error"]
            assert never["message"] == error["message"]
            # The trail: the call that created it and each request about it, under the tool it belongs to.
            methods = [(e.method, e.tool, e.outcome) for e in reversed(await gw.audit(user=ALICE))]
            assert ("tasks/result", RESEARCH, "allowed") in methods and ("tasks/cancel", RESEARCH, "allowed") in methods
            assert methods[0] == ("tools/call", RESEARCH, "allowed")
            # A 2026-07-28 caller is offered no task support (tasks left the core protocol in that version).
            async with Client(StreamableHttpTransport(url, auth=alice), mode="2026-07-28") as modern:
                assert all(tool.execution is None for tool in await modern.list_tools())

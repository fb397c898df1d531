"""The MCP reference server behind the gateway (tests/interop/everything.py): what it answers directly is what a
caller gets through `/mcp-server/...`, in both client eras. The reference server speaks the handshake era only, so a
2026-07-28 client reaches it only through the gateway.

Its questions (elicitation in both modes, sampling), progress, and what it sends a 2025-11-25 session outside any
call (its request for the client's roots, resource updates, simulated logging) are compared too; its tasks in
test_everything_tasks.py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types
from fastmcp import Client

from tests.interop.everything import ENTRY, PACKAGE, everything_server
from tests.lab_config import group, remote, write_identities
from tests.support import LOCAL_USER, gateway, write_config

TEAM = "platform-engineering"

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"message": "hello, gateway"}),
    ("get-sum", {"a": 17, "b": 25}),
    ("get-annotated-message", {"messageType": "error", "includeImage": True}),
    ("get-annotated-message", {"messageType": "success"}),
    ("get-tiny-image", {}),
    ("get-structured-content", {"location": "Chicago"}),
    ("get-resource-links", {"count": 4}),
    ("get-resource-reference", {"resourceType": "Blob", "resourceId": 2}),
]


RESOURCE = "demo://resource/dynamic/text/1"
_CLOCK = re.compile(r"\b\d{1,2}:\d{2}:\d{2}\s?[AP]M\b")


def timeless(value: Any) -> Any:
    """`value` with wall-clock times (the reference server stamps the resources it makes) replaced, blobs decoded."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "blob" and isinstance(item, str):
                with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                    item = base64.b64decode(item, validate=True).decode()
            out[key] = timeless(item)
        return out
    if isinstance(value, list):
        return [timeless(item) for item in value]
    return _CLOCK.sub("<time>", value) if isinstance(value, str) else value


def era_surface(surface: dict[str, Any], mode: str) -> dict[str, Any]:
    """What a caller of `mode` is told through the gateway: a 2025-11-25 caller all of it (task-augmented calls are
    relayed: test_everything_tasks.py); a 2026-07-28 caller no tool's `execution` (tasks left that version's core
    protocol for an extension the gateway does not relay)."""
    if mode == "legacy":
        return surface
    tools = [{k: v for k, v in tool.items() if k != "execution"} for tool in surface["tools"]]
    return {**surface, "tools": tools}


async def surface(client: Client[Any]) -> dict[str, Any]:
    """Everything this test compares, as plain data."""
    tools = sorted((t.model_dump(exclude_none=True) for t in await client.list_tools()), key=lambda t: t["name"])
    calls = []
    for name, arguments in CALLS:
        result = await client.call_tool_mcp(name, arguments)
        calls.append(result.model_dump(exclude_none=True, exclude={"meta"}))
    resources = [r.model_dump(exclude_none=True) for r in await client.list_resources()]
    read = [c.model_dump(exclude_none=True) for c in await client.read_resource(resources[0]["uri"])]
    templates = [t.model_dump(exclude_none=True) for t in await client.list_resource_templates()]
    prompts = [p.model_dump(exclude_none=True) for p in await client.list_prompts()]
    simple = (await client.get_prompt("simple-prompt")).model_dump(exclude_none=True, exclude={"meta"})
    prompt = mcp_types.PromptReference(type="ref/prompt", name="completable-prompt")
    completions = [
        (await client.complete(prompt, {"name": "department", "value": "S"})).model_dump(exclude_none=True),
        (await client.complete(prompt, {"name": "name", "value": ""}, {"department": "Sales"})).model_dump(
            exclude_none=True
        ),
    ]
    return timeless(
        {
            "tools": tools,
            "calls": calls,
            "resources": resources,
            "read": read,
            "templates": templates,
            "prompts": prompts,
            "simple": simple,
            "completions": completions,
        }
    )


async def test_the_reference_server_answers_through_the_gateway_as_it_does_directly(tmp_path: Path) -> None:
    async with everything_server() as everything:
        async with Answers().client(everything.url, "legacy") as direct:
            expected = await surface(direct)
        assert len(expected["tools"]) >= 10 and expected["calls"][1]["content"][0]["text"].endswith("is 42.")
        assert any("execution" in tool for tool in expected["tools"])  # task support: 2025-11-25 callers only
        assert [c["values"] for c in expected["completions"]] == [["Sales", "Support"], ["David", "Eve", "Frank"]]
        config = write_config(tmp_path / "servers.d", {"everything": everything.url.removesuffix("/mcp")})
        async with gateway(config) as gw:
            for mode in ("legacy", "2026-07-28"):
                async with Answers().client(f"{gw.url}/mcp-server/lab/everything/server", mode) as through:
                    assert await surface(through) == era_surface(expected, mode)
            # On /mcp, its prompts and resources are there too, named to find their way back.
            for mode in ("legacy", "2026-07-28"):
                async with Client(f"{gw.url}/mcp", mode=mode) as aggregate:
                    prompts = sorted(p.name for p in await aggregate.list_prompts())
                    assert prompts == sorted(f"lab__everything__{p['name']}" for p in expected["prompts"])
                    simple = await aggregate.get_prompt("lab__everything__simple-prompt")
                    assert timeless(simple.model_dump(exclude_none=True, exclude={"meta"})) == expected["simple"]
                    uris = [str(r.uri) for r in await aggregate.list_resources()]
                    wrapped = [f"mcp-gateway://lab/everything/{r['uri']}" for r in expected["resources"]]
                    assert uris == wrapped
                    read = [c.model_dump(exclude_none=True) for c in await aggregate.read_resource(wrapped[0])]
                    assert timeless(read) == [{**c, "uri": wrapped[0]} for c in expected["read"]]
            # Once the gateway has met the backend, its endpoint announces the completions the backend offers.
            async with Client(f"{gw.url}/mcp-server/lab/everything/server", mode="legacy") as through:
                assert through.initialize_result is not None
                assert through.initialize_result.capabilities.completions is not None


async def test_the_reference_server_over_stdio_answers_as_over_http(tmp_path: Path) -> None:
    """The same server as a `transport: stdio` backend, started and supervised by the gateway: its answers and its
    questions."""
    async with everything_server() as everything:
        async with Answers().client(everything.url, "legacy") as direct:
            expected = await surface(direct)
        direct_answers = Answers()
        async with direct_answers.client(everything.url, "legacy") as direct:
            asked = await questions(direct, direct_answers)
        inbox = Inbox()
        async with Answers().client(everything.url, "legacy", inbox) as direct:
            features = await session_features(direct, inbox, RESOURCE, "legacy")
    node = PACKAGE.ensure_installed()
    server = remote("everything", "unused", [f"team:{TEAM}"])
    del server["url"]
    server.update(transport="stdio", command=str(node), args=[str(ENTRY), "stdio"], cwd=str(PACKAGE.directory))
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "lab.yaml").write_text(group("lab", server))
    write_identities(config, {TEAM: [LOCAL_USER]})
    async with gateway(config, list_deadline_seconds=30) as gw:
        for mode in ("legacy", "2026-07-28"):
            answers = Answers()
            async with answers.client(f"{gw.url}/mcp-server/lab/everything/server", mode) as through:
                assert await surface(through) == era_surface(expected, mode)
                # Its questions reach the caller over stdio too.
                assert await questions(through, answers) == era_of(asked, mode)
            inbox = Inbox()
            async with Answers().client(f"{gw.url}/mcp-server/lab/everything/server", mode, inbox) as through:
                seen = await session_features(through, inbox, RESOURCE, mode)
            assert seen == (features if mode == "legacy" else {k: features[k] for k in ("long", "progress")})


class Answers:
    """A client's answers to the reference server's questions, and what it was asked (for the comparison)."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def elicit(self, message: str, response_type: Any, params: Any, context: Any) -> Any:
        self.asked.append(timeless(params.model_dump(exclude_none=True, exclude={"meta"})))
        if getattr(params, "mode", None) == "url":
            return mcp_types.ElicitResult(action="accept")
        return {"name": "Ada Lovelace", "check": True, "email": "ada@example.com", "integer": 7}

    async def sample(self, messages: Any, params: Any, context: Any) -> str:
        self.asked.append({"sampling": [m.model_dump(exclude_none=True) for m in messages]})
        return "a sampled answer"

    def client(self, url: str, mode: str, inbox: Inbox | None = None) -> Client[Any]:
        return Client(
            url,
            mode=mode,
            elicitation_handler=self.elicit,
            sampling_handler=self.sample,
            roots=["file:///work"],
            message_handler=inbox,
        )


QUESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("trigger-elicitation-request", {}),
    ("trigger-url-elicitation", {"url": "https://example.com/connect", "elicitationId": "e-1"}),
    ("trigger-sampling-request", {"prompt": "Say hello", "maxTokens": 20}),
]


async def questions(client: Client[Any], answers: Answers) -> dict[str, Any]:
    listed = {t.name for t in await client.list_tools()}
    results = []
    for name, arguments in QUESTIONS:
        result = await client.call_tool_mcp(name, arguments)
        results.append(timeless(result.model_dump(exclude_none=True, exclude={"meta"})))
    return {"listed": sorted(listed & {n for n, _ in QUESTIONS}), "results": results, "asked": answers.asked}


def era_of(expected: dict[str, Any], mode: str) -> dict[str, Any]:
    """What a client of `mode` is asked: a 2026-07-28 URL elicitation has no `elicitationId` (that era has no
    `notifications/elicitation/complete` to name it in)."""
    if mode == "legacy":
        return expected
    asked = [{k: v for k, v in entry.items() if k != "elicitation_id"} for entry in expected["asked"]]
    return {**expected, "asked": asked}


async def test_the_reference_servers_questions_reach_the_caller_as_they_do_directly(tmp_path: Path) -> None:
    """Its form (every field type the spec allows), URL-mode elicitation and sampling: the caller is asked what it
    is asked directly, and the backend gets the same answers, over streamable HTTP, in both client eras."""
    async with everything_server() as everything:
        direct = Answers()
        async with direct.client(everything.url, "legacy") as client:
            expected = await questions(client, direct)
        assert expected["listed"] == sorted(n for n, _ in QUESTIONS) and len(expected["asked"]) == 3
        config = write_config(tmp_path / "servers.d", {"everything": everything.url.removesuffix("/mcp")})
        async with gateway(config) as gw:
            for mode in ("legacy", "2026-07-28"):
                through = Answers()
                async with through.client(f"{gw.url}/mcp-server/lab/everything/server", mode) as client:
                    assert await questions(client, through) == era_of(expected, mode)


class Inbox:
    """What a client session is told outside its calls: resource updates and log messages."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self.logged: list[tuple[str, str]] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, mcp_types.ResourceUpdatedNotification):
            self.updated.append(str(root.params.uri))
        elif isinstance(root, mcp_types.LoggingMessageNotification):
            # The reference server names its own session in the text: the gateway's is another one.
            self.logged.append((root.params.level, re.sub(r" - SessionId \S+", "", str(root.params.data))))
        else:
            return
        self._arrived.set()

    async def until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(15):
            while not done():
                await self._arrived.wait()
                self._arrived = anyio.Event()


async def session_features(client: Client[Any], inbox: Inbox, uri: str, mode: str) -> dict[str, Any]:
    """Progress of a long call (both eras); and for a 2025-11-25 session: the roots the server asked it for after
    its handshake, a subscribed resource's update, and simulated logging, both sent outside any call."""
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    long = await client.call_tool_mcp("trigger-long-running-operation", {"duration": 1, "steps": 2}, on_progress)
    seen: dict[str, Any] = {
        "long": timeless(long.model_dump(exclude_none=True, exclude={"meta"})),
        "progress": progress,
    }
    if mode != "legacy":
        return seen
    roots = await client.call_tool_mcp("get-roots-list", {})
    seen["roots"] = roots.model_dump(exclude_none=True, exclude={"meta"})
    await client.session.subscribe_resource(uri)  # type: ignore[arg-type]
    await client.call_tool_mcp("toggle-subscriber-updates", {})  # tells once at once, then every 5 s
    await inbox.until(lambda: bool(inbox.updated))
    await client.call_tool_mcp("toggle-subscriber-updates", {})
    seen["updated"] = inbox.updated[0]
    await client.set_logging_level("debug")
    await client.call_tool_mcp("toggle-simulated-logging", {})
    await inbox.until(lambda: any(level != "info" or "Roots" not in text for level, text in inbox.logged))
    await client.call_tool_mcp("toggle-simulated-logging", {})
    simulated = [text for level, text in inbox.logged if "level message" in text or "level-message" in text]
    seen["logged"] = bool(simulated)
    return seen


async def test_the_reference_servers_session_features_reach_the_caller_as_they_do_directly(tmp_path: Path) -> None:
    """Over streamable HTTP, on the server's own endpoint and on /mcp: progress in both eras; for a 2025-11-25
    session, its roots (asked by the server outside any call, right after its handshake), a resource update and
    simulated log messages (sent outside any call)."""
    resource = RESOURCE
    async with everything_server() as everything:
        inbox = Inbox()
        async with Client(everything.url, mode="legacy", roots=["file:///work"], message_handler=inbox) as direct:
            expected = await session_features(direct, inbox, resource, "legacy")
        assert "file:///work" in json.dumps(expected["roots"]) and expected["logged"]
        assert expected["progress"] == [(1.0, 2.0), (2.0, 2.0)] and expected["updated"] == resource
        config = write_config(tmp_path / "servers.d", {"everything": everything.url.removesuffix("/mcp")})
        async with gateway(config) as gw:
            for endpoint, shown in (
                ("/mcp-server/lab/everything/server", resource),
                ("/mcp", f"mcp-gateway://lab/everything/{resource}"),
            ):
                prefix = "lab__everything__" if endpoint == "/mcp" else ""
                for mode in ("legacy", "2026-07-28"):
                    inbox = Inbox()
                    url = f"{gw.url}{endpoint}"
                    async with Client(url, mode=mode, roots=["file:///work"], message_handler=inbox) as through:
                        seen = await session_features(Named(through, prefix), inbox, shown, mode)  # type: ignore[arg-type]
                    want = (
                        {**expected, "updated": shown}
                        if mode == "legacy"
                        else {k: expected[k] for k in ("long", "progress")}
                    )
                    assert seen == want, (endpoint, mode)


class Named:
    """A client whose tool calls name the tools as an endpoint shows them (on /mcp, namespaced)."""

    def __init__(self, client: Client[Any], prefix: str) -> None:
        self._client, self._prefix = client, prefix
        self.session = client.session

    async def call_tool_mcp(self, name: str, arguments: dict[str, Any], progress: Any = None) -> Any:
        return await self._client.call_tool_mcp(f"{self._prefix}{name}", arguments, progress)

    async def set_logging_level(self, level: str) -> None:
        await self._client.set_logging_level(level)  # type: ignore[arg-type]

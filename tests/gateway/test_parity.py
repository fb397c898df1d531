"""Parity: what a client sees through a single-server endpoint is what it sees talking to the backend directly.

Every behaviour runs twice with the same client library and client era: (a) directly against the lab backend and
(b) through the gateway's `/mcp-server/lab/<backend>/server`, which exposes the backend's tools under their own
names. The two observations are normalized (see `normalize`) and must be equal.

Axes:
- client era: "legacy" (initialize handshake) and "2026-07-28" (per-request envelope, no handshake);
- backend era behind the gateway: "modern" (the lab as-is, which speaks both eras; the gateway talks 2026-07-28
  to it) and "legacy" (the lab wrapped in `LegacyOnly`, so the gateway falls back to the handshake);
- client library, where the behaviour is client-driven: fastmcp's `Client` and the official `mcp.Client`.

The direct baseline is always the plain lab backend in the client's own era: a 2026-07-28 client cannot reach a
legacy-only backend at all, and the wrapper changes only the negotiation, never a result. The servers (two
backends, one gateway) are started once for the module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import mcp
import mcp_types
import pytest
from fastmcp import Client as FastClient
from fastmcp import Context, FastMCP
from mcp.shared.exceptions import MCPError
from mcp_types import LOG_LEVEL_META_KEY, SERVER_INFO_META_KEY
from pydantic import BaseModel

from tests.backends import build_lab
from tests.support import LegacyOnly, gateway, serve, write_config

MODERN = "2026-07-28"
ERAS = ["legacy", MODERN]
BACKENDS = ["modern", "legacy"]
KINDS = ["fastmcp", "mcp"]
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
CHATTY_LEVELS = ["debug", "info", "warning"]  # what the lab's `chatty` tool logs, in order
UNSET: Any = object()  # "leave the client's log_level at its default"


# -- servers, started once for the module -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def parity_lab() -> FastMCP:
    """The lab backend plus one probe tool that reports the custom `_meta` its request arrived with."""
    lab = build_lab()

    @lab.tool
    def seen_meta(ctx: Context) -> dict[str, Any]:
        """The request's _meta, without the protocol's own reserved keys (they describe the hop, not the caller)."""
        meta = ctx.request_context.meta if ctx.request_context else None
        return {k: v for k, v in dict(meta or {}).items() if not k.startswith("io.modelcontextprotocol/")}

    return lab


@dataclass(frozen=True)
class Lab:
    backends: dict[str, str]  # backend era -> the backend's own MCP URL
    gateway: str  # the gateway's base URL

    @property
    def direct(self) -> str:
        """The direct baseline: the plain lab (speaks both eras). It is also the gateway's "modern" backend."""
        return self.backends["modern"]

    def endpoint(self, backend: str) -> str:
        return f"{self.gateway}/mcp-server/lab/{backend}/server"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with (
        serve(parity_lab().http_app(path="/mcp")) as modern,
        serve(LegacyOnly(parity_lab().http_app(path="/mcp"))) as legacy,
    ):
        config = write_config(
            tmp_path_factory.mktemp("parity") / "servers.d", {"modern": modern.url, "legacy": legacy.url}
        )
        async with gateway(config) as gw:
            yield Lab({"modern": f"{modern.url}/mcp", "legacy": f"{legacy.url}/mcp"}, gw.url)


# -- one client API over both libraries -------------------------------------------------------------------------

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
OnLog = Callable[[mcp_types.LoggingMessageNotificationParams], Awaitable[None]]


class Session:
    """A connected fastmcp or official client, behind the few raw-result calls the parity checks make."""

    def __init__(self, kind: str, client: Any) -> None:
        self.kind = kind
        self.client = client

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        progress: Progress | None = None,
        meta: dict[str, Any] | None = None,
    ) -> mcp_types.CallToolResult:
        if self.kind == "fastmcp":
            result = await self.client.call_tool_mcp(name, arguments, progress_handler=progress, meta=meta)
        else:
            result = await self.client.call_tool(name, arguments, progress_callback=progress, meta=meta)
        assert isinstance(result, mcp_types.CallToolResult)
        return result

    async def list_tools(self) -> mcp_types.ListToolsResult:
        return await (self.client.list_tools_mcp() if self.kind == "fastmcp" else self.client.list_tools())

    async def list_resources(self) -> mcp_types.ListResourcesResult:
        return await (self.client.list_resources_mcp() if self.kind == "fastmcp" else self.client.list_resources())

    async def list_resource_templates(self) -> mcp_types.ListResourceTemplatesResult:
        if self.kind == "fastmcp":
            return await self.client.list_resource_templates_mcp()
        return await self.client.list_resource_templates()

    async def read_resource(self, uri: str) -> mcp_types.ReadResourceResult:
        return await (self.client.read_resource_mcp(uri) if self.kind == "fastmcp" else self.client.read_resource(uri))

    async def list_prompts(self) -> mcp_types.ListPromptsResult:
        return await (self.client.list_prompts_mcp() if self.kind == "fastmcp" else self.client.list_prompts())

    async def get_prompt(self, name: str, arguments: dict[str, str]) -> mcp_types.GetPromptResult:
        if self.kind == "fastmcp":
            return await self.client.get_prompt_mcp(name, arguments)
        return await self.client.get_prompt(name, arguments)

    async def settle(self) -> None:
        """Wait until every notification that arrived so far has reached its callback.

        Both clients hand each notification to its callback in a task spawned in arrival order, so a call may
        return before its callbacks ran. A later round trip whose own progress callback we wait for is a barrier:
        every notification that arrived before it was dispatched first.
        """
        seen = anyio.Event()

        async def on_progress(_progress: float, _total: float | None, _message: str | None) -> None:
            seen.set()

        await self.call("progress", {"steps": 1}, progress=on_progress)
        with anyio.fail_after(5):
            await seen.wait()


async def _ignore_log(_params: mcp_types.LoggingMessageNotificationParams) -> None:
    return None


@asynccontextmanager
async def connect(
    kind: str, url: str, mode: str, *, on_log: OnLog = _ignore_log, log_level: Any = UNSET
) -> AsyncIterator[Session]:
    """A client of library `kind` in protocol `mode`; `log_level` applies to the official client only.

    fastmcp's client always opts in to every log level on 2026-07-28 requests (its documented contract); the
    official client opts in only when given a `log_level`.
    """
    if kind == "fastmcp":
        assert log_level is UNSET, "fastmcp's client has no log_level setting; use per-request _meta"
        async with FastClient(url, mode=mode, log_handler=on_log) as client:
            yield Session(kind, client)
    else:
        options: dict[str, Any] = {} if log_level is UNSET else {"log_level": log_level}
        async with mcp.Client(url, mode=mode, logging_callback=on_log, **options) as client:
            yield Session(kind, client)


# -- observations and their normalization -----------------------------------------------------------------------


def dump(value: BaseModel) -> dict[str, Any]:
    return value.model_dump(mode="json", by_alias=True, exclude_none=True)


def normalize(value: Any) -> Any:
    """An observation with the fields that legitimately differ between a direct and a gatewayed answer removed.

    The only one: the `io.modelcontextprotocol/serverInfo` stamp in a result's `_meta`. A 2026-07-28 server stamps
    its own identity on every result; through the gateway the stamp may name the gateway (`virtual-mcp`, seen when
    the backend is legacy-only and so never stamped) instead of the backend (`lab`). A `_meta` left empty by the
    removal is dropped with it (the direct result then had no `_meta` either). Everything else, including
    `resultType`, `cacheScope`, tool `_meta`, content, errors, must match exactly. (Whether a legacy caller should
    see the stamp at all is checked separately, unnormalized, in `test_legacy_results_carry_no_modern_stamp`.)
    """
    if isinstance(value, dict):
        out = {k: normalize(v) for k, v in value.items()}
        meta = out.get("_meta")
        if isinstance(meta, dict) and SERVER_INFO_META_KEY in meta:
            meta = {k: v for k, v in meta.items() if k != SERVER_INFO_META_KEY}
            if meta:
                out["_meta"] = meta
            else:
                del out["_meta"]
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


async def outcome(request: Awaitable[BaseModel]) -> dict[str, Any]:
    """A request's result, or the JSON-RPC error it was answered with (code, message and data, all compared)."""
    try:
        return {"result": normalize(dump(await request))}
    except MCPError as exc:
        return {"error": dump(exc.error)}


async def parity(lab: Lab, backend: str, observe: Callable[[str], Awaitable[Any]]) -> Any:
    """Observe directly and through the gateway's endpoint for `backend`; assert equality; return the observation."""
    with anyio.fail_after(30):
        direct = await observe(lab.direct)
        through = await observe(lab.endpoint(backend))
    assert through == direct
    return direct


# -- tool results: content types, structuredContent, isError, unknown tools ------------------------------------


def _content_types(seen: dict[str, Any]) -> list[str]:
    return [block["type"] for block in seen["result"]["content"]]


# label -> (tool, arguments, what the lab is known to answer directly, so that no comparison is vacuous)
TOOL_CASES: dict[str, tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
    "text": ("echo", {"text": "hi"}, lambda seen: _content_types(seen) == ["text"]),
    "structured int": ("add", {"a": 2, "b": 3}, lambda seen: seen["result"]["structuredContent"] == {"result": 5}),
    "structured object": (
        "point",
        {"x": 1, "y": 2},
        lambda seen: seen["result"]["structuredContent"] == {"x": 1, "y": 2},
    ),
    "image": ("image", {}, lambda seen: _content_types(seen) == ["image"]),
    "audio": ("audio", {}, lambda seen: _content_types(seen) == ["audio"]),
    "embedded resource": ("embedded", {}, lambda seen: _content_types(seen) == ["text", "resource"]),
    "isError": ("fail", {"reason": "on purpose"}, lambda seen: seen["result"]["isError"] is True),
    "invalid arguments": ("add", {"a": "two"}, lambda seen: seen["result"]["isError"] is True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("kind", KINDS)
async def test_tools(lab: Lab, kind: str, era: str, backend: str) -> None:
    """tools/list, then one tools/call per case (content types, structuredContent, isError)."""

    async def observe(url: str) -> dict[str, Any]:
        async with connect(kind, url, era) as session:
            seen = {"tools/list": await outcome(session.list_tools())}
            for label, (name, arguments, _) in TOOL_CASES.items():
                seen[label] = await outcome(session.call(name, arguments))
            return seen

    seen = await parity(lab, backend, observe)
    assert {"echo", "image", "fail", "progress", "chatty"} <= {t["name"] for t in seen["tools/list"]["result"]["tools"]}
    for label, (_, _, expected) in TOOL_CASES.items():
        assert expected(seen[label]), (label, seen[label])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_tool_is_a_protocol_error(lab: Lab, kind: str, era: str, backend: str) -> None:
    """The one deliberate difference: fastmcp answers an unknown tool with an isError result, the gateway always with
    JSON-RPC -32602, because a tool the caller may not use must be answered exactly like one that does not exist,
    whatever style each backend has (see tests/gateway/test_bad_input.py for the hidden/missing comparison)."""
    async with connect(kind, lab.endpoint(backend), era) as session:
        seen = await outcome(session.call("no_such_tool", {}))
    assert seen == {"error": {"code": -32602, "message": "Unknown tool: 'no_such_tool'"}}
    async with connect(kind, lab.backends[backend], era if backend == "modern" else "legacy") as session:
        direct = await outcome(session.call("no_such_tool", {}))
    assert direct["result"]["isError"] is True


# -- notifications while a tool runs: progress and log messages -------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("kind", KINDS)
async def test_progress_notifications(lab: Lab, kind: str, era: str, backend: str) -> None:
    async def observe(url: str) -> dict[str, Any]:
        updates: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            updates.append((progress, total, message))

        async with connect(kind, url, era) as session:
            result = await outcome(session.call("progress", {"steps": 3}, progress=on_progress))
            await session.settle()
        return {"result": result, "progress": updates}

    seen = await parity(lab, backend, observe)
    assert seen["progress"] == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]


LOG_VARIANTS = [
    # (client library, client log_level setting, per-request logLevel _meta)
    pytest.param("fastmcp", UNSET, None, id="fastmcp-default"),  # fastmcp opts in at debug on its own
    pytest.param("fastmcp", UNSET, "warning", id="fastmcp-meta-warning"),
    pytest.param("mcp", UNSET, None, id="mcp-no-opt-in"),
    pytest.param("mcp", "warning", None, id="mcp-log_level-warning"),
    pytest.param("mcp", "debug", None, id="mcp-log_level-debug"),
    pytest.param("mcp", UNSET, "info", id="mcp-meta-info"),
]


def expected_log_levels(kind: str, era: str, log_level: Any, meta_level: str | None) -> list[str]:
    """What the lab itself delivers: everything on the handshake era; from the opted-in level up on 2026-07-28."""
    if era == "legacy":
        return CHATTY_LEVELS
    threshold = meta_level or (("debug" if kind == "fastmcp" else None) if log_level is UNSET else log_level)
    if threshold is None:
        return []
    return [level for level in CHATTY_LEVELS if LEVELS.index(level) >= LEVELS.index(threshold)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(("kind", "log_level", "meta_level"), LOG_VARIANTS)
async def test_log_messages(
    lab: Lab, kind: str, log_level: Any, meta_level: str | None, era: str, backend: str
) -> None:
    async def observe(url: str) -> dict[str, Any]:
        logs: list[dict[str, Any]] = []

        async def on_log(params: mcp_types.LoggingMessageNotificationParams) -> None:
            logs.append(dump(params))

        meta = {LOG_LEVEL_META_KEY: meta_level} if meta_level else None
        async with connect(kind, url, era, on_log=on_log, log_level=log_level) as session:
            result = await outcome(session.call("chatty", {}, meta=meta))
            await session.settle()
        return {"result": result, "logs": logs}

    seen = await parity(lab, backend, observe)
    assert [entry["level"] for entry in seen["logs"]] == expected_log_levels(kind, era, log_level, meta_level)


# -- resources and prompts (forwarded as they are by a remote server's own endpoint) ----------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("kind", KINDS)
async def test_resources(lab: Lab, kind: str, era: str, backend: str) -> None:
    async def observe(url: str) -> dict[str, Any]:
        async with connect(kind, url, era) as session:
            return {
                "list": await outcome(session.list_resources()),
                "templates": await outcome(session.list_resource_templates()),
                "read static": await outcome(session.read_resource("lab://readme")),
                "read templated": await outcome(session.read_resource("lab://notes/7")),
                "read missing": await outcome(session.read_resource("lab://missing")),
            }

    seen = await parity(lab, backend, observe)
    assert [r["uri"] for r in seen["list"]["result"]["resources"]] == ["lab://readme"]
    assert [t["uriTemplate"] for t in seen["templates"]["result"]["resourceTemplates"]] == ["lab://notes/{note_id}"]
    assert seen["read templated"]["result"]["contents"][0]["text"] == "note 7"
    assert seen["read missing"]["error"]["code"] == -32602


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("kind", KINDS)
async def test_prompts(lab: Lab, kind: str, era: str, backend: str) -> None:
    async def observe(url: str) -> dict[str, Any]:
        async with connect(kind, url, era) as session:
            return {
                "list": await outcome(session.list_prompts()),
                "get": await outcome(session.get_prompt("review", {"code": "x = 1", "style": "kind"})),
                "get with default": await outcome(session.get_prompt("review", {"code": "x = 1"})),
                "missing argument": await outcome(session.get_prompt("review", {})),
                "unknown prompt": await outcome(session.get_prompt("no_such_prompt", {})),
            }

    seen = await parity(lab, backend, observe)
    assert [p["name"] for p in seen["list"]["result"]["prompts"]] == ["review"]
    assert seen["get with default"]["result"]["messages"][0]["content"]["text"] == "Review this (terse): x = 1"
    assert seen["unknown prompt"]["error"]["code"] == -32602
    assert "error" in seen["missing argument"]


# -- capabilities, log levels, result stamps, request _meta (a known difference is a strict xfail) ---------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_legacy_client_sets_log_level(lab: Lab, backend: str) -> None:
    async def observe(url: str) -> dict[str, Any]:
        logs: list[str] = []

        async def on_log(params: mcp_types.LoggingMessageNotificationParams) -> None:
            logs.append(params.level)

        async with connect("mcp", url, "legacy", on_log=on_log) as session:
            set_level = await outcome(session.client.set_logging_level("warning"))
            await session.call("chatty", {})
            await session.settle()
        return {"setLevel": set_level, "logs": logs}

    seen = await parity(lab, backend, observe)
    assert seen["logs"] == ["warning"]


EXTENSIONS_DROPPED = (
    "on 2026-07-28 the endpoint advertises no `extensions`: the backend's `io.modelcontextprotocol/ui` (fastmcp's "
    "MCP Apps extension) is dropped, because build_server passes no extensions to the SDK server"
)


def capability_cases() -> list[Any]:
    cases = []
    for era in ERAS:
        for backend in BACKENDS:
            for capability in ("tools", "resources", "prompts", "logging", "completions", "extensions"):
                reason = None
                if capability == "extensions" and era == MODERN and backend == "modern":
                    reason = EXTENSIONS_DROPPED
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                cases.append(pytest.param(era, backend, capability, marks=marks, id=f"{era}-{backend}-{capability}"))
    return cases


@pytest.mark.parametrize(("era", "backend", "capability"), capability_cases())
async def test_capabilities(lab: Lab, era: str, backend: str, capability: str) -> None:
    """The endpoint advertises the features its backend advertises to a client of the era the backend speaks.

    Compared: which capabilities are present (and which extension identifiers). Not compared: the `listChanged`
    and `subscribe` flags, which describe the gateway's own notification delivery (its own subscriptions/listen
    stream on 2026-07-28; relaying tools/list_changed on the handshake era), not the backend's features.
    """
    # A 2026-07-28 client learns capabilities from server/discover, so it connects in "auto" mode here.
    mode = "auto" if era == MODERN else "legacy"
    baseline_mode = mode if backend == "modern" else "legacy"

    async def advertised(url: str, connect_mode: str) -> dict[str, Any]:
        async with mcp.Client(url, mode=connect_mode) as client:
            assert (client.protocol_version == MODERN) == (connect_mode == "auto")
            return dump(client.server_capabilities)

    through = await advertised(lab.endpoint(backend), mode)
    direct = await advertised(lab.backends[backend], baseline_mode)
    if capability == "extensions":
        assert sorted(through.get("extensions") or {}) == sorted(direct.get("extensions") or {}), (through, direct)
    else:
        assert (capability in through) == (capability in direct), (through, direct)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_legacy_results_carry_no_modern_stamp(lab: Lab, backend: str) -> None:
    """Unnormalized: a handshake-era client sees the same result `_meta` as it would from the backend directly."""

    async def observe(url: str) -> dict[str, Any]:
        async with connect("mcp", url, "legacy") as session:
            results = {
                "tools/call": await session.call("echo", {"text": "hi"}),
                "tools/list": await session.list_tools(),
                "resources/read": await session.read_resource("lab://readme"),
                "prompts/get": await session.get_prompt("review", {"code": "x"}),
            }
        return {method: dump(result).get("_meta") for method, result in results.items()}

    seen = await parity(lab, backend, observe)
    assert not any(SERVER_INFO_META_KEY in (meta or {}) for meta in seen.values()), seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("era", ERAS)
async def test_request_meta_reaches_backend(lab: Lab, era: str, backend: str) -> None:
    async def observe(url: str) -> dict[str, Any]:
        async with connect("mcp", url, era) as session:
            return await outcome(session.call("seen_meta", {}, meta={"example.com/trace": "t-1"}))

    seen = await parity(lab, backend, observe)
    assert seen["result"]["structuredContent"] == {"example.com/trace": "t-1"}

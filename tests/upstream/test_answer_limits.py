"""A backend's answer costs the gateway at most `limits.max_upstream_response_bytes` (8 MiB by default): checked while
it streams in, whatever its framing, and past it the caller gets -32012 naming the limit, the connection is closed
and the backend can push no more. And one backend's bad tool list costs only its bad entries: `/mcp` stays
listable for everyone."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError

from tests.backends import build_lab
from tests.hostile.liar import KEPT, Liar, Scenario, Writer, chunked, http, lying, rpc
from tests.lab_config import write_identities
from tests.security_support import SecureGateway, secure_gateway
from tests.support import serve
from virtual_mcp.types import PrincipalKind

MODERN = "2026-07-28"
DEFAULT_LIMIT = 8 * 1024 * 1024
MB = 1024 * 1024
USERS = ("alice@northwind.example", "bob@northwind.example")


@dataclass
class Pushed:
    """How many body bytes a backend managed to push at the gateway."""

    bytes: dict[str, int] = field(default_factory=dict)


def pushing(pushed: Pushed, key: str, head: bytes, piece: bytes, total: int, chunk: bool = False) -> Writer:
    """`head`, then `piece` repeated up to `total` bytes (counted as they leave), then the end of the body."""

    async def write(writer: asyncio.StreamWriter) -> bool:
        writer.write(head)
        framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunk else piece
        pushed.bytes[key] = 0
        while pushed.bytes[key] < total:
            writer.write(framed)
            await writer.drain()
            pushed.bytes[key] += len(piece)
        writer.write(b"0\r\n\r\n" if chunk else b"")
        await writer.drain()
        return False

    return write


def one_huge_chunk(pushed: Pushed, key: str, total: int) -> Writer:
    """An event stream whose first chunk claims `total` bytes: an event line starts, and never ends."""

    async def write(writer: asyncio.StreamWriter) -> bool:
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
        writer.write(head + f"{total:x}\r\n".encode() + b": ok\ndata: ")
        pushed.bytes[key] = 0
        while pushed.bytes[key] < total - 16:
            writer.write(b"y" * 65536)
            await writer.drain()
            pushed.bytes[key] += 65536
        return False

    return write


BAD_TOOLS = [{"name": "no_schema"}, dict(KEPT, name="bad_description", description=5), dict(KEPT, name="m", _meta=[1])]


def scenarios(pushed: Pushed) -> dict[str, Scenario]:
    json_head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"
    return {
        "endless-json": Scenario({"tools/call": lambda m: pushing(pushed, "json", json_head, b" " * 65536, 100 * MB)}),
        "chunked-json": Scenario(
            {"tools/call": lambda m: pushing(pushed, "chunked", chunked(b"[", end=False), b" " * 65536, 100 * MB, True)}
        ),
        "huge-chunk-sse": Scenario({"tools/call": lambda m: one_huge_chunk(pushed, "sse", 100 * MB)}),
        "bad-tools": Scenario({"tools/list": lambda m: rpc(m, {"tools": [KEPT, *BAD_TOOLS]})}),
        "big-answer": Scenario({"tools/call": lambda m: http(200, b" " * (100 * MB))}),
    }


@dataclass
class Lab:
    gw: SecureGateway
    liar: Liar
    pushed: Pushed
    tokens: list[str]

    def client(self, path: str, user: int = 0, mode: str = "legacy") -> Client[Any]:
        return Client(StreamableHttpTransport(f"{self.gw.url}{path}", auth=self.tokens[user]), mode=mode)

    async def call_error(self, server: str, user: int = 0) -> tuple[int, str]:
        """The JSON-RPC error a tools/call of `kept` on `server` gets."""
        with pytest.raises(MCPError) as refused:
            async with self.client(f"/mcp-server/lab/{server}/server", user) as client:
                await client.call_tool("kept", {})
        return refused.value.code, refused.value.message

    async def others_served(self) -> None:
        async with self.client("/mcp-server/lab/good/server", 1, mode="auto") as client:
            assert (await client.call_tool("echo", {"text": "bob"})).data == "bob"


@asynccontextmanager
async def lab(tmp_path: Path, **settings: Any) -> AsyncIterator[Lab]:
    pushed = Pushed()
    async with lying(scenarios(pushed)) as liar, serve(build_lab().http_app(path="/mcp")) as good:
        config = tmp_path / "servers.d"
        config.mkdir()
        entries = [("good", f"{good.url}/mcp"), *((name, f"{liar.url}/{name}") for name in liar.scenarios)]
        (config / "lab.yaml").write_text(
            "name: lab\ntype: provider-account/mcp-server-group\nintegrations:\n"
            + "".join(
                f"  - name: {name}\n    type: integration/mcp-server/remote\n    url: {url}\n"
                "    authorized_subjects: [team:p]\n"
                for name, url in entries
            )
        )
        write_identities(config, {"p": USERS})
        async with secure_gateway(config, tmp_path / "data", **settings) as gw:
            tokens = [await gw.token(PrincipalKind.USER, user) for user in USERS]
            yield Lab(gw, liar, pushed, tokens)


TOO_LARGE = f"its answer is larger than limits.max_upstream_response_bytes ({DEFAULT_LIMIT} bytes)"
LINE_TOO_LARGE = f"its event-stream line is larger than limits.max_upstream_response_bytes ({DEFAULT_LIMIT} bytes)"


@pytest.mark.parametrize(
    ("server", "key", "expected"),
    [
        ("endless-json", "json", TOO_LARGE),
        ("chunked-json", "chunked", TOO_LARGE),
        ("huge-chunk-sse", "sse", LINE_TOO_LARGE),  # one chunk claiming 100 MB holds one endless line
    ],
)
async def test_a_huge_answer_is_cut_off_at_the_limit_as_it_streams_in(
    tmp_path: Path, server: str, key: str, expected: str
) -> None:
    async with lab(tmp_path) as t:
        with anyio.fail_after(30):
            assert await t.call_error(server) == (-32012, f"backend 'lab/{server}': {expected}")
        # The gateway stopped reading at the limit and closed the connection: the backend pushed little more than
        # the limit (what the kernel's socket buffers hold), not its 100 MB.
        assert DEFAULT_LIMIT < t.pushed.bytes[key] < DEFAULT_LIMIT + 16 * MB
        await t.others_served()


async def test_three_huge_answers_at_once_cost_at_most_the_limit_each(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        errors: list[tuple[int, str]] = []

        async def call() -> None:
            errors.append(await t.call_error("endless-json"))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        # Each answer is held up to the limit while it streams in (and its pieces once more when joined), never whole.
        assert grown < 3 * 2 * DEFAULT_LIMIT + 32 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
        assert errors == [(-32012, f"backend 'lab/endless-json': {TOO_LARGE}")] * 3
        await t.others_served()


async def test_one_backends_bad_tools_leave_every_list_served_without_them(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        for user, mode in ((0, "legacy"), (1, MODERN)):
            async with t.client("/mcp", user, mode) as client:
                names = {tool.name for tool in await client.list_tools()}
            assert {"lab__good__echo", "lab__bad-tools__kept"} <= names
            assert not {"lab__bad-tools__no_schema", "lab__bad-tools__bad_description", "lab__bad-tools__m"} & names
        left_out = t.gw.metrics.registry.get_sample_value(
            "vmcp_upstream_invalid_entries_total", {"server": "lab/bad-tools", "kind": "tool"}
        )
        assert left_out == 3
        async with t.client("/mcp-server/lab/bad-tools/server") as client:
            assert [tool.name for tool in await client.list_tools()] == ["kept"]

"""`transport: stdio` backends (virtual_mcp/upstream/stdio.py): real processes (tests/stdio_backend.py) started,
supervised and stopped by the gateway."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client

from tests.lab_config import ALICE, BOB, PLATFORM, group, write_identities
from tests.security_support import secure_gateway
from tests.sensitive import mark
from tests.support import LOCAL_USER, REPO, gateway
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import ConfigError, UpstreamTimeout, UpstreamUnavailable
from virtual_mcp.registry import build_registry
from virtual_mcp.types import PrincipalKind, ServerRef
from virtual_mcp.upstream.era import Negotiated
from virtual_mcp.upstream.stdio import StdioServer

TEAM = "platform-engineering"
TOKEN = "stdio-backend-token-0123456789abcdef"
mark(TOKEN)


def stdio_server(name: str = "local", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "type": "integration/mcp-server/remote",
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "tests.stdio_backend"],
        "cwd": str(REPO),
        "env": {"LAB_TOKEN": "tfy-secret://t:lab:token", "GREETING": "hello"},
        "authorized_subjects": [f"team:{TEAM}"],
    }
    return {**entry, **fields}


def write(config: Path, *servers: dict[str, Any]) -> Path:
    config.mkdir(parents=True, exist_ok=True)
    (config / "lab.yaml").write_text(group("lab", *servers))
    write_identities(config, {TEAM: [LOCAL_USER]})
    return config


async def test_a_stdio_server_behind_the_gateway_in_both_eras(tmp_path: Path) -> None:
    config = write(tmp_path / "servers.d", stdio_server())
    # A process starts in its own time (a second or more on a loaded machine): the first list waits for it.
    async with gateway(config, secrets={"tfy-secret://t:lab:token": TOKEN}, list_deadline_seconds=30) as gw:
        for mode in ("legacy", "2026-07-28"):
            async with Client(f"{gw.url}/mcp-server/lab/local/server", mode=mode) as client:
                assert {"echo", "env", "crash"} <= {t.name for t in await client.list_tools()}
                assert (await client.call_tool("echo", {"text": f"hi {mode}"})).data == f"hi {mode}"
                assert (await client.call_tool("env", {"name": "GREETING"})).data == "hello"
                # Its environment is its own: not the gateway's, and its secrets never come back out.
                assert (await client.call_tool("env", {"name": "HOME"})).data == ""
                echoed = (await client.call_tool("env", {"name": "LAB_TOKEN"})).data
                assert TOKEN not in str(echoed)
                assert (await client.call_tool("complain", {"text": f"it hurts, {TOKEN}", "times": 3})).data
            async with Client(f"{gw.url}/mcp", mode=mode) as client:
                assert "lab__local__echo" in {t.name for t in await client.list_tools()}


@pytest.mark.parametrize("shared", [False, True])
async def test_two_principals_never_share_a_process_unless_the_server_is_shared(tmp_path: Path, shared: bool) -> None:
    server = stdio_server(authorized_subjects=[f"team:{PLATFORM}"])
    if shared:
        server["upstream_session"] = "shared"
    config = write(tmp_path / "servers.d", server)
    write_identities(config, {PLATFORM: [ALICE, BOB]})
    secrets = {"tfy-secret://t:lab:token": TOKEN}
    async with secure_gateway(config, tmp_path / "data", secrets) as gw:
        alice, bob = await gw.token(PrincipalKind.USER, ALICE), await gw.token(PrincipalKind.USER, BOB)
        url = "/mcp-server/lab/local/server"
        async with gw.client(url, alice) as as_alice, gw.client(url, bob) as as_bob:
            assert (await as_alice.call_tool("remember", {"value": "alice's draft"})).data == "remembered"
            assert (await as_bob.call_tool("recall", {})).data == ("alice's draft" if shared else "")
            assert (await as_alice.call_tool("recall", {})).data == "alice's draft"
            pids = {(await c.call_tool("pid", {})).data for c in (as_alice, as_bob)}
            assert len(pids) == (1 if shared else 2)


async def test_stdio_processes_are_bounded_in_all(tmp_path: Path) -> None:
    """At `limits.max_stdio_processes`, a newcomer's process replaces the least recently used idle caller's (the
    server's own, which holds its tool list, stays); the one stopped is started again when next needed."""
    config = write(tmp_path / "servers.d", stdio_server(authorized_subjects=[f"team:{PLATFORM}"]))
    users = [ALICE, BOB, "carol@northwind.example"]
    write_identities(config, {PLATFORM: users})
    secrets = {"tfy-secret://t:lab:token": TOKEN}
    limits = Limits(max_stdio_processes=2)
    async with secure_gateway(config, tmp_path / "data", secrets, limits=limits, list_deadline_seconds=30) as gw:
        pool = gw.runtime.pool

        def processes() -> int:
            return sum(isinstance(s, StdioServer) for s in pool._sessions.values())

        pids: dict[str, Any] = {}
        for user in [*users, ALICE]:
            async with gw.client("/mcp-server/lab/local/server", await gw.token(PrincipalKind.USER, user)) as client:
                pid = (await client.call_tool("pid", {})).data
                assert processes() <= 2
                assert pid not in pids.values() or pids.get(user) == pid  # nobody is served by another's process
                pids[user] = pid
        assert len(set(pids.values())) == 3  # each user had their own; Alice's was started again


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def supervised(
    clock: Clock, changes: list[str], module: str = "tests.stdio_backend"
) -> AsyncIterator[StdioServer]:
    learned: list[Negotiated] = []
    async with anyio.create_task_group() as tg:
        server = StdioServer(
            ServerRef("lab", "local"),
            [sys.executable, "-m", module],
            {"LAB_TOKEN": TOKEN},
            str(REPO),
            spawn=tg.start_soon,
            on_list_changed=lambda: changes.append("changed"),
            on_negotiated=learned.append,
            max_answer_bytes=1 << 20,
            secrets=[TOKEN],
            clock=clock,
        )
        try:
            yield server
        finally:
            await server.aclose()
    assert learned and learned[0].capabilities.get("tools") is not None


async def call(server: StdioServer, tool: str, **arguments: Any) -> Any:
    result = await server.request("tools/call", {"name": tool, "arguments": arguments}, timeout=30)
    return result.get("structuredContent", {}).get("result")


async def test_a_crashed_server_is_started_again_after_a_backoff(tmp_path: Path) -> None:
    clock, changes = Clock(), []
    async with supervised(clock, changes) as server:
        first = await call(server, "pid")
        with pytest.raises(UpstreamUnavailable, match="exited with status 3"):
            await call(server, "crash")
        assert changes == ["changed"]  # its tools leave the lists
        assert not server.healthy
        with pytest.raises(UpstreamUnavailable, match="started again in"):
            await call(server, "pid")  # within the backoff: not started, a precise answer
        clock.now += 1.0  # past the first backoff (0.5 s, jitter included)
        second = await call(server, "pid")
        assert second != first and server.healthy
        # A second crash soon after doubles the wait.
        with pytest.raises(UpstreamUnavailable):
            await call(server, "crash")
        clock.now += 0.7
        with pytest.raises(UpstreamUnavailable, match="started again in"):
            await call(server, "pid")
        clock.now += 1.0
        assert await call(server, "pid") not in (first, second)


async def test_a_renewed_token_starts_the_process_again_and_no_secret_is_ever_let_through(tmp_path: Path) -> None:
    """However often its token is renewed, the configuration's secrets and its newest tokens are removed from what
    the process says; a renewal starts it again, with the new token, when it is next used."""
    changes: list[str] = []
    async with supervised(Clock(), changes) as server:
        first = await call(server, "pid")
        tokens = [f"renewed-token-{i}-0123456789abcdef" for i in range(12)]
        mark(*tokens)
        for token in tokens:
            server.use_env({"GH_TOKEN": token}, [token])
        assert await call(server, "pid") != first  # started again, once
        for name in ("LAB_TOKEN", "GH_TOKEN"):
            said = str(await call(server, "env", name=name))
            assert TOKEN not in said and tokens[-1] not in said, name
        assert changes == []  # a planned restart: its tools never left the lists


async def test_a_call_given_up_on_is_cancelled_and_the_process_serves_on() -> None:
    async with supervised(Clock(), []) as server:
        first = await call(server, "pid")
        with pytest.raises(UpstreamTimeout):
            await server.request("tools/call", {"name": "slow", "arguments": {}}, timeout=0.5)
        assert server.in_flight == 0
        assert await call(server, "pid") == first  # the same process, still answering
        assert await call(server, "echo", text="after") == "after"


async def test_progress_reaches_its_call_and_a_failing_receiver_harms_nobody() -> None:
    seen: list[float] = []

    async def receive(message: dict[str, Any]) -> None:
        seen.append(message["params"]["progress"])

    async def broken(message: dict[str, Any]) -> None:
        raise anyio.BrokenResourceError  # the caller's stream is gone

    async with supervised(Clock(), []) as server:
        for handler in (receive, broken):
            result = await server.request(
                "tools/call",
                {"name": "progress", "arguments": {"steps": 3}},
                timeout=30,
                on_notification=handler,
                meta={"progressToken": f"token-{handler.__name__}"},
            )
            assert not result.get("isError")
        assert seen == [1, 2, 3]
        assert await call(server, "echo", text="still here") == "still here" and server.healthy


async def test_garbage_on_stdout_ends_the_process_and_says_why(tmp_path: Path) -> None:
    clock, changes = Clock(), []
    async with supervised(clock, changes, "tests.stdio_liar") as server:
        with pytest.raises(UpstreamUnavailable) as refused:
            await server.request("tools/list", {}, timeout=30)
        assert refused.value.message == "backend 'lab/local': wrote a line that is not JSON"
        assert not server.healthy and changes == ["changed"]
        clock.now += 1.0  # started again after the backoff, and refused again the same way
        with pytest.raises(UpstreamUnavailable, match="wrote a line that is not JSON"):
            await server.request("tools/list", {}, timeout=30)


async def test_stderr_floods_cost_no_memory_and_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with supervised(Clock(), []) as server:
        caplog.set_level("INFO", logger="virtual_mcp.upstream.stdio")
        assert await call(server, "complain", text=f"{'x' * 5000} {TOKEN}", times=200) == "complained"
        assert await call(server, "echo", text="still serving") == "still serving"
    lines = [r.getMessage() for r in caplog.records if "stdio server lab/local:" in r.getMessage()]
    assert lines and all(len(line) < 2100 for line in lines)
    assert not any(TOKEN in line for line in lines)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"command": "no-such-command-anywhere"}, "command: 'no-such-command-anywhere' is not found on PATH"),
        ({"command": "./missing.sh"}, "command: './missing.sh' is not an executable file"),
        ({"cwd": "/no/such/dir"}, "cwd: '/no/such/dir' is not a directory"),
        ({"url": "http://h/mcp"}, "transport stdio takes no url"),
        ({"command": None}, "transport stdio needs a command"),
        ({"env": {"BAD NAME": "x"}}, "env"),
    ],
)
def test_a_stdio_server_that_cannot_run_is_refused_precisely(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    server = {k: v for k, v in stdio_server(**fields).items() if v is not None}
    config = write(tmp_path / "servers.d", server)
    with pytest.raises(ConfigError) as refused:
        build_registry(load_config_dir(config))
    assert expected in "\n".join(str(issue) for issue in refused.value.issues)


async def test_check_and_serve_name_a_missing_command(tmp_path: Path) -> None:
    from tests.processes import cli

    config = write(tmp_path / "servers.d", stdio_server(command="no-such-command-anywhere"))
    for command in (["check", "--config", str(config)], ["serve", "--config", str(config), "--port", "0"]):
        code, out, err = await cli(*command)
        assert code != 0 and "'no-such-command-anywhere' is not found on PATH" in out + err, (command, out, err)

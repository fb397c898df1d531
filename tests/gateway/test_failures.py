"""Backends that fail: refused, hung, restarted, answering garbage. The gateway must stay useful through all of it.

Every server is real and on loopback; nothing sleeps. Wall-clock time is measured (time.monotonic) only to bound
how long the gateway makes its callers wait, with generous margins.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.shared.exceptions import MCPError

from tests.backends import Probe, build_lab
from tests.gateway._hostile import Amnesiac, Cutoff, Garbage, Liar, hanging, refused_port, restartable
from tests.support import LegacyOnly, Served, bind, gateway, serve, write_config

ERAS = ["legacy", "2026-07-28"]
DEADLINE = 1.0  # list_deadline_seconds given to the gateway
MARGIN = 1.5  # slack on top of a deadline for everything else a request does
FAST = DEADLINE / 2  # a tools/list that did not wait for any deadline takes far less than this
GATEWAY_CODES = range(-32099, -31999)  # the gateway's own JSON-RPC server-error range
GOOD_TOOLS = {"lab__good__echo", "lab__good__add", "lab__good__slow"}

Restart = Callable[[Any], AbstractAsyncContextManager[Served]]


def lab_app(probe: Probe | None = None, name: str = "lab", legacy: bool = False) -> Any:
    app = build_lab(probe, name=name).http_app(path="/mcp")
    return LegacyOnly(app) if legacy else app


async def timed_tool_names(client: mcp.Client) -> tuple[set[str], float]:
    start = time.monotonic()
    result = await client.list_tools(cache_mode="bypass")
    return {t.name for t in result.tools}, time.monotonic() - start


async def echo(client: mcp.Client, name: str, text: str) -> Any:
    return (await client.call_tool(name, {"text": text})).structured_content


async def call_error(client: mcp.Client, name: str) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await client.call_tool(name, {"text": "x"})
    return caught.value


def assert_names_backend(error: MCPError, server: str) -> None:
    assert error.code in GATEWAY_CODES, f"{error.code}: {error.message}"
    assert f"backend 'lab/{server}'" in error.message, error.message


@asynccontextmanager
async def with_good(tmp_path: Path, bad: dict[str, str], **settings: Any) -> AsyncIterator[Served]:
    """A gateway over one healthy lab backend (`good`) and the given bad ones (name -> base URL)."""
    async with serve(lab_app(name="good")) as good:
        config = write_config(tmp_path / "servers.d", {"good": good.url, **bad})
        async with gateway(config, list_deadline_seconds=DEADLINE, **settings) as gw:
            yield gw


# -- backends that fail fast: refused, garbage, malformed results --------------------------------------------------


async def test_refused_and_garbage_backends_are_left_out_and_named(tmp_path: Path) -> None:
    liar = Liar()
    async with (
        serve(Garbage("html")) as html,
        serve(Garbage("json")) as json_,
        serve(Garbage("sse")) as sse,
        serve(liar) as lying,
    ):
        bad = {
            "down": f"http://127.0.0.1:{refused_port()}",
            "html": html.url,
            "json": json_.url,
            "sse": sse.url,
            "liar": lying.url,
        }
        async with (
            with_good(tmp_path, bad) as gw,
            mcp.Client(f"{gw.url}/mcp", mode="legacy") as old,
            mcp.Client(f"{gw.url}/mcp", mode="2026-07-28") as new,
        ):
            names, elapsed = await timed_tool_names(old)
            assert elapsed < DEADLINE + MARGIN
            assert names >= GOOD_TOOLS
            assert all(n.startswith("lab__good__") for n in names), sorted(names)
            assert "tools/list" in liar.methods  # the liar was asked, and its answer refused

            # Negative caching: the failed backends are neither waited for nor asked again right away.
            asked = len(liar.methods)
            names_again, elapsed = await timed_tool_names(new)
            assert names_again == names
            assert elapsed < FAST
            assert len(liar.methods) == asked

            for client in (old, new):
                errors = {server: await call_error(client, f"lab__{server}__echo") for server in bad}
                for server, error in errors.items():
                    assert_names_backend(error, server)
                    # The good backend is not disturbed by its neighbours.
                    assert await echo(client, "lab__good__echo", server) == {"result": server}
                assert "cannot reach" in errors["down"].message
                assert "not JSON-RPC" in errors["html"].message and "text/html" in errors["html"].message
                assert "JSON-RPC" in errors["json"].message
                assert "invalid JSON" in errors["sse"].message
                assert "result is not an object" in errors["liar"].message


async def test_backend_dropping_the_connection_during_initialize_is_named(tmp_path: Path) -> None:
    cutoff = Cutoff()
    async with serve(cutoff) as cut, with_good(tmp_path, {"cut": cut.url}) as gw:
        for era in ERAS:
            async with mcp.Client(f"{gw.url}/mcp", mode=era) as client:
                names, elapsed = await timed_tool_names(client)
                assert names >= GOOD_TOOLS and elapsed < DEADLINE + MARGIN
                assert await echo(client, "lab__good__echo", era) == {"result": era}
                error = await call_error(client, "lab__cut__echo")
                assert "initialize" in cutoff.methods
                assert_names_backend(error, "cut")


# -- a backend that accepts and never answers ----------------------------------------------------------------------


async def test_hung_backend_costs_one_deadline_and_its_calls_time_out(tmp_path: Path) -> None:
    async with (
        hanging() as (hung, app),
        with_good(tmp_path, {"hung": hung.url}, call_timeout_seconds=DEADLINE) as gw,
        AsyncExitStack() as stack,
    ):
        # A session's handshake meets the backends it has not met (what they offer shapes what it is offered), as
        # its first list would: the deadline is paid once, by the two together.
        start = time.monotonic()
        old = await stack.enter_async_context(mcp.Client(f"{gw.url}/mcp", mode="legacy"))
        names, _ = await timed_tool_names(old)
        elapsed = time.monotonic() - start
        new = await stack.enter_async_context(mcp.Client(f"{gw.url}/mcp", mode="2026-07-28"))
        assert app.requests >= 1  # it really was asked
        assert DEADLINE * 0.9 <= elapsed < DEADLINE + MARGIN
        assert names >= GOOD_TOOLS
        assert not any(n.startswith("lab__hung__") for n in names)

        for client in (new, old):
            start = time.monotonic()
            error = await call_error(client, "lab__hung__echo")
            assert time.monotonic() - start < DEADLINE + MARGIN
            assert_names_backend(error, "hung")
            assert await echo(client, "lab__good__echo", "still") == {"result": "still"}


async def test_hung_backend_is_not_waited_for_twice(tmp_path: Path) -> None:
    async with (
        hanging() as (hung, _),
        with_good(tmp_path, {"hung": hung.url}) as gw,
        mcp.Client(f"{gw.url}/mcp", mode="2026-07-28") as client,
    ):
        _, first = await timed_tool_names(client)
        assert first >= DEADLINE * 0.9
        names, second = await timed_tool_names(client)
        assert names >= GOOD_TOOLS
        assert second < FAST


# -- a backend that restarts ---------------------------------------------------------------------------------------


@asynccontextmanager
async def restarting(tmp_path: Path) -> AsyncIterator[tuple[Served, Restart]]:
    """A gateway over one lab backend whose port stays bound across restarts; yields (gateway, restart).

    `restart(app)` serves `app` as the next incarnation of the backend, on the very same port.
    """
    sock = bind()
    config = write_config(tmp_path / "servers.d", {"lab": f"http://127.0.0.1:{sock.getsockname()[1]}"})
    async with gateway(config) as gw:
        try:
            yield gw, lambda app: restartable(sock, app)
        finally:
            # Closed before the gateway stops, so that its goodbye to the backend is refused, not left waiting.
            sock.close()


@pytest.mark.parametrize(("backend_era", "client_era"), [("legacy", "2026-07-28"), ("modern", "legacy")])
async def test_restarted_backend_is_reconnected(tmp_path: Path, backend_era: str, client_era: str) -> None:
    legacy = backend_era == "legacy"
    before, after = Probe(), Probe()
    async with restarting(tmp_path) as (gw, restart), mcp.Client(f"{gw.url}/mcp", mode=client_era) as client:
        async with restart(lab_app(before, legacy=legacy)):
            assert "lab__lab__echo" in {t.name for t in (await client.list_tools()).tools}
            assert await echo(client, "lab__lab__echo", "one") == {"result": "one"}
        # A new process (no memory of any session) now serves the same port.
        amnesiac = Amnesiac(lab_app(after, legacy=legacy))
        async with restart(amnesiac):
            with anyio.fail_after(10):
                assert await echo(client, "lab__lab__echo", "two") == {"result": "two"}
            assert (before.calls, after.calls) == (1, 1)
            calls = [status for label, status in amnesiac.exchanges if label == "POST tools/call"]
            if legacy:
                # The old session was refused, a new one negotiated, and the call resent once.
                assert "tools/call" in amnesiac.refused
                assert ("POST initialize", 200) in amnesiac.exchanges
                assert calls == [404, 200]
            else:
                assert amnesiac.refused == []
                assert calls == [200]
            names = {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
            assert "lab__lab__add" in names


async def test_restart_reconnects_every_request_in_flight(tmp_path: Path) -> None:
    after = Probe()
    async with restarting(tmp_path) as (gw, restart), mcp.Client(f"{gw.url}/mcp") as client:
        async with restart(lab_app(legacy=True)):
            assert await echo(client, "lab__lab__echo", "up") == {"result": "up"}
        # Both calls reach the new process with the old session id; the second is refused while the gateway is
        # renegotiating because of the first.
        amnesiac = Amnesiac(lab_app(after, legacy=True), stagger=2)
        results: dict[str, Any] = {}

        async def call(text: str) -> None:
            try:
                results[text] = await echo(client, "lab__lab__echo", text)
            except MCPError as exc:
                results[text] = f"{exc.code}: {exc.message}"

        async with restart(amnesiac):
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, "a")
                    tg.start_soon(call, "b")
        assert amnesiac.refused.count("tools/call") == 2
        assert results == {"a": {"result": "a"}, "b": {"result": "b"}}
        assert after.calls == 2


async def test_backend_down_then_back_on_the_same_port(tmp_path: Path) -> None:
    sock = bind()
    port = sock.getsockname()[1]
    config = write_config(tmp_path / "servers.d", {"lab": f"http://127.0.0.1:{port}"})
    async with gateway(config) as gw, mcp.Client(f"{gw.url}/mcp", mode="legacy") as client:
        async with serve(lab_app(legacy=True), sock):
            assert await echo(client, "lab__lab__echo", "up") == {"result": "up"}
        # uvicorn closed the socket on the way out: the port is refused now.
        error = await call_error(client, "lab__lab__echo")
        assert_names_backend(error, "lab")
        assert "cannot reach" in error.message
        async with serve(lab_app(legacy=True), bind(port)):
            assert await echo(client, "lab__lab__echo", "back") == {"result": "back"}


# -- cancellation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_era", ERAS)
@pytest.mark.parametrize("backend_era", ["legacy", "modern"])
async def test_cancelled_call_is_cancelled_at_the_backend(tmp_path: Path, backend_era: str, client_era: str) -> None:
    """Legacy clients cancel with notifications/cancelled, 2026-07-28 clients by closing the response stream;
    the gateway must pass either on in the backend's own era."""
    probe = Probe()
    async with serve(lab_app(probe, legacy=backend_era == "legacy")) as backend:
        config = write_config(tmp_path / "servers.d", {"lab": backend.url})
        async with gateway(config) as gw, mcp.Client(f"{gw.url}/mcp", mode=client_era) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "lab__lab__slow", {})
                with anyio.fail_after(10):
                    await probe.slow_started.wait()
                tg.cancel_scope.cancel()
            with anyio.fail_after(10):
                await probe.slow_cancelled.wait()
            # The gateway and the client's connection are fine afterwards.
            assert await echo(client, "lab__lab__echo", "next") == {"result": "next"}

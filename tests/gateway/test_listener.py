"""Reading a request is bounded in time and size on a real `serve` (slowloris): a client that sends its head a byte
at a time, or nothing at all, or its body a byte at a time, is cut off within the configured time while other
clients are served all along; a head without end is refused at the size limit. Raw sockets, a real gateway
process, no sleeps: the dribble is paced by the other client's requests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import mcp
import pytest
from anyio.abc import SocketStream

from tests.lab_config import write_identities
from tests.ports import free_ports
from tests.processes import gateway_process
from tests.support import LOCAL_USER, bind

TIMEOUT = 1.0  # seconds, for the head and for the body
GENEROUS = 6.0  # how late the cut-off may come on a busy two-core machine


@asynccontextmanager
async def slow_gateway(tmp_path: Path) -> AsyncIterator[str]:
    config = tmp_path / "servers.d"
    config.mkdir()  # no backends: the aggregate endpoint alone, for the local user
    write_identities(config, {"t": [LOCAL_USER]})
    port = free_ports(1)[0]
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    args += ["--local-user", LOCAL_USER, "--request-head-timeout", str(TIMEOUT), "--request-body-timeout", str(TIMEOUT)]
    async with gateway_process(args):
        yield f"http://127.0.0.1:{port}"


async def read_all(stream: SocketStream, into: bytearray, closed: anyio.Event) -> None:
    """Everything the server sends on `stream` until it closes it."""
    try:
        while True:
            into += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass
    closed.set()


async def dribble(url: str, opening: bytes, then: bytes) -> tuple[bytes, float, int]:
    """Send `opening` at once, then `then` one byte at a time, each byte after another client's request was served,
    until the server closes the connection. Returns what the server answered, how long the connection lived, and
    how many requests the other client had served meanwhile."""
    port = int(url.rsplit(":", 1)[1])
    answer = bytearray()
    closed = anyio.Event()
    served = 0
    started = time.monotonic()
    async with (
        await anyio.connect_tcp("127.0.0.1", port) as slow,
        httpx.AsyncClient(base_url=url) as other,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(read_all, slow, answer, closed)
        with anyio.fail_after(TIMEOUT + GENEROUS):
            if opening:
                await slow.send(opening)
            for byte in then:
                if closed.is_set():
                    break
                assert (await other.get("/healthz")).status_code == 200
                served += 1
                try:
                    await slow.send(bytes([byte]))
                except (anyio.BrokenResourceError, OSError):
                    break
            await closed.wait()
        lived = time.monotonic() - started
        tg.cancel_scope.cancel()
    return bytes(answer), lived, served


async def still_serves(url: str) -> None:
    async with mcp.Client(f"{url}/mcp") as client:
        assert await client.list_tools() is not None


async def test_a_head_sent_byte_by_byte_is_cut_off_while_others_are_served(tmp_path: Path) -> None:
    async with slow_gateway(tmp_path) as url:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        answer, lived, served = await dribble(url, b"", head + b"a" * 100_000)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert answer.endswith(f"Request head not received within {TIMEOUT:g} s".encode())
        assert TIMEOUT * 0.9 <= lived <= TIMEOUT + GENEROUS
        assert served > 5  # the other client was served all along
        await still_serves(url)


async def test_a_connection_that_says_nothing_is_closed_without_an_answer(tmp_path: Path) -> None:
    async with slow_gateway(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        answer = bytearray()
        closed = anyio.Event()
        started = time.monotonic()
        async with await anyio.connect_tcp("127.0.0.1", port) as silent, anyio.create_task_group() as tg:
            tg.start_soon(read_all, silent, answer, closed)
            with anyio.fail_after(TIMEOUT + GENEROUS):
                await still_serves(url)
                await closed.wait()
        assert answer == b"" and time.monotonic() - started >= TIMEOUT * 0.9
        await still_serves(url)


async def test_a_body_sent_byte_by_byte_is_cut_off_and_never_acted_on(tmp_path: Path) -> None:
    async with slow_gateway(tmp_path) as url:
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}' + b" " * 100_000
        head = (
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
            b"Mcp-Method: tools/list\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        answer, lived, served = await dribble(url, head, body)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert answer.endswith(f"Request body not received within {TIMEOUT:g} s".encode())
        assert b"jsonrpc" not in answer  # the request was never answered as if its body were complete
        assert TIMEOUT * 0.9 <= lived <= TIMEOUT + GENEROUS and served > 5
        await still_serves(url)


async def test_a_head_without_end_is_refused_at_the_size_limit(tmp_path: Path) -> None:
    async with slow_gateway(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        answer = bytearray()
        closed = anyio.Event()
        async with await anyio.connect_tcp("127.0.0.1", port) as big, anyio.create_task_group() as tg:
            tg.start_soon(read_all, big, answer, closed)
            with anyio.fail_after(GENEROUS):
                await big.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                try:
                    # 17 headers of 4 KiB: just past the limit, then nothing more. (Bytes still arriving after the
                    # gateway closed would make this machine answer them with a reset, which can discard the 431
                    # before the client reads it.)
                    for _ in range(17):
                        await big.send(b"X-Filler: " + b"f" * 4096 + b"\r\n")
                except (anyio.BrokenResourceError, OSError):
                    pass
                await closed.wait()
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
        assert answer.endswith(b"Request head larger than 65536 bytes")
        await still_serves(url)


async def test_a_serve_that_cannot_take_its_port_is_never_taken_for_ready(tmp_path: Path) -> None:
    """Whoever holds the port answers there; a test kit that took `serve`'s exit for READY would talk to it."""
    config = tmp_path / "servers.d"
    config.mkdir()
    write_identities(config, {"t": [LOCAL_USER]})
    with bind() as taken:
        port = taken.getsockname()[1]
        args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--port", str(port)]
        with pytest.raises(AssertionError, match="before it listened") as refused:
            async with gateway_process(args):
                pass
    assert "address already in use" in str(refused.value).lower()

"""The lean HTTP/1.1 client against real loopback servers that answer exactly as scripted: framing, streaming,
reuse, and each failure mapped to what the session does with it (resend, or tell the caller)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from virtual_mcp.upstream.http1 import Broken, ConnectFailed, Dropped, Http1Pool, proxied, target
from virtual_mcp.upstream.limits import AnswerTooLarge

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


@asynccontextmanager
async def running(
    handler: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Server]:
    server = Server(lambda r, w: handler(server, r, w))
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def url(server: Server, path: str = "/mcp") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def keep_alive_json(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await server.request(reader)
        answer = b'{"echo":' + body + b"}"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer))
        writer.write(answer)
        await writer.drain()


async def test_json_answers_reuse_one_connection() -> None:
    async with running(keep_alive_json) as server:
        pool = Http1Pool(connect_timeout=5)
        to = target(url(server, "/mcp?x=1"))
        for i in range(3):
            async with pool.post(to, b"%d" % i, {"content-type": "application/json", "x-k": "v"}) as response:
                assert response.status == 200 and response.headers["content-type"] == "application/json"
                assert await response.read() == b'{"echo":%d}' % i
        assert server.connections == 1
        head = server.requests[0].split(b"\r\n")
        assert head[0] == b"POST /mcp?x=1 HTTP/1.1"
        assert f"host: 127.0.0.1:{server.port}".encode() in head and b"x-k: v" in head
        await pool.aclose()


async def test_a_chunked_event_stream_is_read_as_it_arrives() -> None:
    second = anyio.Event()

    async def stream(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: one\r\n\r\n", b"data: t", b"wo\n\n"):
            if part == b"data: t":
                await second.wait()  # the client must have the first event before the rest is sent
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await server.request(reader)  # kept alive: a second request on the same connection
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with running(stream) as server:
        pool = Http1Pool(connect_timeout=5)
        lines = []
        async with pool.post(target(url(server)), b"{}", {}) as response:
            async for line in response.lines():
                lines.append(line)
                if line == "data: one":
                    second.set()
        assert lines == ["data: one", "", "data: two", ""]
        async with pool.post(target(url(server)), b"{}", {}) as response:
            assert response.status == 204 and await response.read() == b""
        assert server.connections == 1


async def test_interim_continue_and_close_delimited_bodies() -> None:
    async def close_delimited(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with running(close_delimited) as server:
        pool = Http1Pool(connect_timeout=5)
        for _ in range(2):
            async with pool.post(target(url(server)), b"{}", {}) as response:
                assert response.status == 200 and await response.read() == b"all of it"
        assert server.connections == 2  # never reused


async def test_a_pooled_connection_closed_without_an_answer_is_dropped_a_fresh_one_is_broken() -> None:
    async def answer_once(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            await server.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        await server.request(reader)  # then read the next request and hang up without a word

    async with running(answer_once) as server:
        pool = Http1Pool(connect_timeout=5)
        async with pool.post(target(url(server)), b"{}", {}) as response:
            await response.read()
        with pytest.raises(Dropped):  # nothing can have happened: a request without side effects may be resent
            async with pool.post(target(url(server)), b"{}", {}):
                pass
        with pytest.raises(Broken, match="closed the connection without answering"):
            async with pool.post(target(url(server)), b"{}", {}):
                pass


@pytest.mark.parametrize(
    ("answer", "reading", "message"),
    [
        (b"SMTP ready\r\n\r\n", False, "not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", False, "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True, "closed before the answer was complete"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True, "malformed or truncated"),
        (b"HTTP/1.1 200 OK\r\nContent", False, "head was cut off"),
    ],
)
async def test_malformed_answers_are_broken(answer: bytes, reading: bool, message: str) -> None:
    async def garbage(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(answer)
        await writer.drain()

    async with running(garbage) as server:
        pool = Http1Pool(connect_timeout=5)
        with pytest.raises(Broken, match=message):
            async with pool.post(target(url(server)), b"{}", {}) as response:
                if reading:
                    await response.read()


async def test_nothing_listening_is_connect_failed() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(ConnectFailed, match="cannot connect: ConnectionRefusedError"):
        async with Http1Pool(connect_timeout=5).post(target(f"http://127.0.0.1:{port}/mcp"), b"{}", {}):
            pass


def test_targets() -> None:
    assert target("https://mcp.example.com/a/b?c=d") == target("https://mcp.example.com:443/a/b?c=d")
    t = target("https://mcp.example.com/a/b?c=d")
    assert (t.scheme, t.host, t.port, t.path, t.host_header) == (
        "https",
        "mcp.example.com",
        443,
        "/a/b?c=d",
        "mcp.example.com",
    )
    v6 = target("http://[::1]:8080")
    assert (v6.host, v6.port, v6.path, v6.host_header) == ("::1", 8080, "/", "[::1]:8080")
    with pytest.raises(ValueError, match="not an http"):
        target("ftp://example.com/")


def test_proxied_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not proxied("http://backend.internal/mcp")
    monkeypatch.setenv("http_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert proxied("http://backend.internal/mcp")
    assert not proxied("http://127.0.0.1:9000/mcp")
    assert not proxied("https://backend.internal/mcp")  # no https proxy configured


async def test_bytes_sent_on_an_idle_connection_are_never_taken_for_the_next_answer() -> None:
    """A backend that says something unasked (e.g. a 408 before it hangs up) spoils that connection."""
    said = anyio.Event()

    async def chatty(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            await keep_alive_json(server, reader, writer)
            return
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")  # unasked
        await writer.drain()
        said.set()
        await keep_alive_json(server, reader, writer)

    async with running(chatty) as server:
        pool = Http1Pool(connect_timeout=5)
        async with pool.post(target(url(server)), b"1", {}) as response:
            assert await response.read() == b"{}"
        with anyio.fail_after(5):
            await said.wait()
        async with pool.post(target(url(server)), b"2", {}) as response:
            assert (response.status, await response.read()) == (200, b'{"echo":2}')
        assert server.connections == 2


async def test_an_answer_without_a_body_is_complete_at_once() -> None:
    async def no_content(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no length: still no body
            await writer.drain()

    async with running(no_content) as server:
        pool = Http1Pool(connect_timeout=5)
        for _ in range(2):
            with anyio.fail_after(5):
                async with pool.post(target(url(server)), b"{}", {}) as response:
                    assert (response.status, await response.read()) == (204, b"")
        assert server.connections == 1


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 4096\r\n\r\n" + b"x" * 4096,  # refused by its declared size, before its body
        b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"x" * 4096,  # one chunk claiming 1 MiB
    ],
)
async def test_an_answer_past_the_limit_is_refused_and_its_connection_not_reused(framing: bytes) -> None:
    async def big_then_small(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.request(reader)
            small = server.connections > 1 or len(server.requests) > 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" if small else b"HTTP/1.1 200 OK\r\n" + framing
            )
            await writer.drain()

    async with running(big_then_small) as server:
        pool = Http1Pool(connect_timeout=5, max_answer_bytes=1024)
        with pytest.raises(AnswerTooLarge) as refused:
            async with pool.post(target(url(server)), b"{}", {}) as response:
                await response.read()
        assert str(refused.value) == "its answer is larger than limits.max_upstream_response_bytes (1024 bytes)"
        async with pool.post(target(url(server)), b"{}", {}) as response:
            assert await response.read() == b"{}"
        assert server.connections == 2  # the connection of the refused answer was closed, not pooled
        await pool.aclose()


async def test_an_event_stream_line_past_the_limit_is_refused_however_it_is_chunked() -> None:
    async def one_chunk(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        part = b"data: short\n" + b"y" * 4096  # a newline early in the chunk, then a line without end
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await reader.read()

    async with running(one_chunk) as server:
        pool = Http1Pool(connect_timeout=5, max_answer_bytes=1024)
        lines: list[str] = []
        with pytest.raises(AnswerTooLarge, match="event-stream line"):
            async with pool.post(target(url(server)), b"{}", {}) as response:
                async for line in response.lines():
                    lines.append(line)
        assert lines == ["data: short"]
        await pool.aclose()

"""A lean HTTP/1.1 client for the forwarding hot path: one POST of a JSON-RPC message over a pooled keep-alive
connection, and its answer (a JSON body, or an SSE stream read as it arrives).

httpx costs the gateway about as much CPU per forwarded call as everything else together (its pool, transport and
model layers, and anyio stream wrappers); this does only what a POST to an MCP backend needs. Everything else
(era negotiation, standing GET streams, DELETE, OAuth and JWKS requests) stays on httpx.

Supported: http and https (one SSL context for the pool), Content-Length, chunked and close-delimited bodies,
`100 Continue` interim answers. Not supported, so left to httpx: proxies (`proxied()` tells), HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

from virtual_mcp.fields import check_headers
from virtual_mcp.tls import client_context
from virtual_mcp.upstream.limits import capped_lines, read_capped

MAX_HEADER_BYTES = 64 * 1024
_PIECE = 64 * 1024  # the most one read takes from the socket: a body is never held whole before it is checked
_MAX_TRAILERS = 64


class ConnectFailed(Exception):
    """No connection could be opened: nothing was sent."""


class Dropped(Exception):
    """The connection closed before any byte of the answer (typically a pooled connection the backend closed)."""


class Broken(Exception):
    """The connection failed or the answer was malformed after it had started."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one backend URL's requests go."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    host_header: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, shown if default else f"{shown}:{port}")


def proxied(url: str) -> bool:
    """Whether the environment sends requests for `url` through a proxy (then httpx, which supports them, is used)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, idle_seconds: float) -> bool:
        """Open, quiet (anything the backend sent while idle, e.g. a 408 before closing, would be taken for the
        next answer), and not idle for too long."""
        return (
            not self.reader.at_eof()
            and not _buffered(self.reader)
            and not self.writer.is_closing()
            and now - self.idle_since < idle_seconds
        )

    def close(self) -> None:
        self.writer.close()


class Response:
    """An answer whose head has been read; the body is read with `read()` or `lines()`, once."""

    def __init__(
        self, status: int, headers: dict[str, str], conn: _Connection, limit: int, version: str = "HTTP/1.1"
    ) -> None:
        self.status = status
        self.limit = limit  # the most one body (or one line of it) may hold
        self.headers = headers
        self._conn = conn
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None and length.isdigit() and not self._chunked else None
        if status in (204, 304) or 100 <= status < 200:
            self._chunked, self._remaining = False, 0  # no body, whatever the headers say (RFC 9112 6.3)
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        self._to_close = "close" in tokens or version == "HTTP/1.0"
        self.complete = False  # the whole body was read: the connection may serve another request

    @property
    def reusable(self) -> bool:
        return self.complete and not self._to_close and (self._chunked or self._remaining is not None)

    async def read(self) -> bytes:
        """The whole body; AnswerTooLarge past `limit` (then the connection is not reused: the body was not read)."""
        return await read_capped(self._chunks(), self.limit, None if self._chunked else self._remaining)

    def lines(self) -> AsyncIterator[str]:
        """The body as text lines (`\\n` or `\\r\\n` ended), each as soon as it is complete and none past `limit`."""
        return capped_lines(self._chunks(), self.limit)

    async def _chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        try:
            if self._chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size < 0:
                        raise ValueError("negative chunk size")
                    if size == 0:
                        for _ in range(_MAX_TRAILERS):
                            if (await reader.readuntil(b"\r\n")) == b"\r\n":
                                break
                        else:
                            raise Broken("the answer's trailers do not end")
                        break
                    # One chunk may claim any size: it is handed on as it arrives, in pieces, so the consumer's
                    # limit holds (and is checked) however slowly or hugely the chunk comes.
                    while size > 0:
                        data = await reader.read(min(size, _PIECE))
                        if not data:
                            raise Broken("the connection closed before the answer was complete")
                        size -= len(data)
                        yield data
                    if await reader.readexactly(2) != b"\r\n":
                        raise Broken("malformed chunked answer")
            elif self._remaining is not None:
                while self._remaining > 0:
                    data = await reader.read(min(self._remaining, _PIECE))
                    if not data:
                        raise Broken("the connection closed before the answer was complete")
                    self._remaining -= len(data)
                    yield data
            else:
                while data := await reader.read(_PIECE):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise Broken(f"malformed or truncated answer: {type(exc).__name__}") from None
        except OSError as exc:
            raise Broken(f"connection failed: {type(exc).__name__}") from None
        self.complete = True


class Http1Pool:
    """Keep-alive connections per origin, reused most recently used first. No cookie jar: nothing a backend says
    in one answer is sent with another request."""

    def __init__(
        self,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        max_idle_per_origin: int = 64,
        max_answer_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._max_answer = max_answer_bytes
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    @asynccontextmanager
    async def post(self, to: Target, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        """Send the POST; the answer's head is read before the block starts. Raises ConnectFailed, Dropped, Broken."""
        conn, pooled = await self._acquire(to)
        response: Response | None = None
        try:
            try:
                conn.writer.write(_request_head(to, len(body), headers) + body)
                response = await _read_head(conn, self._max_answer)
            except Dropped:
                if not pooled:
                    raise Broken("the backend closed the connection without answering") from None
                raise
            yield response
        finally:
            if response is not None and response.reusable:
                self._release(to, conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def _acquire(self, to: Target) -> tuple[_Connection, bool]:
        idle = self._idle.get(to.origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self._idle_seconds):
                return conn, True
            conn.close()
        try:
            with anyio.fail_after(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    to.host,
                    to.port,
                    ssl=self._ssl_context() if to.scheme == "https" else None,
                    server_hostname=to.host if to.scheme == "https" else None,
                    limit=MAX_HEADER_BYTES,  # the longest head (or chunk-size line) read at once
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect: {type(exc).__name__}") from None
        return _Connection(reader, writer), False

    def _release(self, to: Target, conn: _Connection) -> None:
        idle = self._idle.setdefault(to.origin, deque())
        if len(idle) >= self._max_idle or _buffered(conn.reader):  # bytes past the answer: not a clean connection
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = client_context()  # the same trust as the gateway's httpx clients, built once per process
        return self._ssl


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether bytes wait unread in `reader` (asyncio offers no public accessor for its buffer)."""
    return bool(getattr(reader, "_buffer", b""))


def _request_head(to: Target, length: int, headers: Mapping[str, str]) -> bytes:
    check_headers(headers)  # whatever their source: a CR or LF here would write a header or request of its own
    lines = [f"POST {to.path} HTTP/1.1", f"host: {to.host_header}", f"content-length: {length}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items() if name.lower() not in _FRAMING)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


async def _read_head(conn: _Connection, limit: int) -> Response:
    reader = conn.reader
    while True:
        try:
            await conn.writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise Dropped from None
            raise Broken("the answer's head was cut off") from None
        except asyncio.LimitOverrunError:
            raise Broken("the answer's head is too large") from None
        except (ConnectionResetError, BrokenPipeError):
            raise Dropped from None
        except OSError as exc:
            raise Broken(f"connection failed: {type(exc).__name__}") from None
        if len(head) > MAX_HEADER_BYTES:
            raise Broken("the answer's head is too large")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise Broken("the answer is not HTTP/1.x")
        if code == "100":
            continue
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise Broken("malformed header line in the answer")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return Response(int(code), headers, conn, limit, version)

"""How the gateway listens: uvicorn, with the time and size bounds on reading a request that uvicorn lacks.

uvicorn (0.55, read from its source) bounds the idle time between two requests on a keep-alive connection
(`timeout_keep_alive`), but nothing else about reading one: no timer runs from the moment a connection opens until
its first byte, the keep-alive timer is cancelled by any byte, and the httptools parser it uses by default has no
limit on the size of a request head. So a client that opens a connection and sends nothing, or sends its head a
byte at a time (slowloris), or a body a byte a minute, holds a connection (and, for a body, the task serving it)
for as long as it likes, and a head without end grows in memory.

`GuardedProtocol` is uvicorn's own httptools protocol with those bounds, at the protocol level, where a request is
still bytes, for every route:

- the head (request line and headers) must be complete within `request_head_timeout_seconds` of the connection
  opening or of the first byte of the next request on it; after that, 408 and the connection is closed (closed
  without an answer if not a byte came);
- the head may not exceed `max_request_head_bytes`: 431 and close;
- the body must be complete within `request_body_timeout_seconds` of the head; after that, 408 and close, and the
  application sees the client as gone (it never acts on part of a body). Time the gateway itself holds the body
  back (its read buffer full while it works, a pipelined request waiting its turn) is not counted against the
  client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from virtual_mcp.config.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class RequestLimits:
    head_timeout: float
    body_timeout: float
    max_head_bytes: int

    @classmethod
    def of(cls, settings: GatewaySettings) -> RequestLimits:
        return cls(
            settings.request_head_timeout_seconds,
            settings.request_body_timeout_seconds,
            settings.max_request_head_bytes,
        )


def _answer(status: int, reason: str, text: str) -> bytes:
    body = text.encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol(HttpToolsProtocol):
    LIMITS: ClassVar[RequestLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._received = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received = True
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Still inside a head after this chunk: every byte of it was head (a head completed within the chunk
            # is not counted; the chunk is bounded by the transport's read size).
            self._head_bytes += len(data)
            if self._head_bytes > self.LIMITS.max_head_bytes:
                limit = self.LIMITS.max_head_bytes
                self._refuse(431, "Request Header Fields Too Large", f"Request head larger than {limit} bytes")

    # httptools parser callbacks (uvicorn's own, then the guard's bookkeeping)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:  # a connection's first request keeps the deadline counted from its opening
            self._arm_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if not self.transport.is_closing() and not self.parser.should_upgrade():  # an upgrade has no body
            self._body_timer = self.loop.call_later(self.LIMITS.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # deadlines

    def _arm_head(self) -> None:
        self._head_timer = self.loop.call_later(self.LIMITS.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if not self._received:
            self.transport.close()  # never said a word: nothing to answer
            return
        timeout = self.LIMITS.head_timeout
        self._refuse(408, "Request Timeout", f"Request head not received within {timeout:g} s")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The gateway is not reading (its buffer is full, or the request waits behind a pipelined one): the
            # client is not the slow one. Counted again from now.
            self._body_timer = self.loop.call_later(self.LIMITS.body_timeout, self._body_too_slow)
            return
        cycle = self.cycle
        timeout = self.LIMITS.body_timeout
        answer = cycle is not None and not cycle.response_started
        if cycle is not None:
            cycle.disconnected = True  # the application's receive() says the client is gone; its sends are dropped
            cycle.message_event.set()
        if answer:
            self.transport.write(_answer(408, "Request Timeout", f"Request body not received within {timeout:g} s"))
        self.transport.close()

    def _refuse(self, status: int, reason: str, text: str) -> None:
        self._cancel_timers()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_answer(status, reason, text))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


def guarded_protocol(limits: RequestLimits) -> type[GuardedProtocol]:
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"LIMITS": limits})


def server_config(app: Any, settings: GatewaySettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration `serve` and `demo` run the gateway with. log_config=None: uvicorn's records go
    through the gateway's handler and its filters, not uvicorn's own."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,
        lifespan="on",
        http=guarded_protocol(RequestLimits.of(settings)),
        **options,
    )

"""A remote backend on the HTTP+SSE transport of protocol 2024-11-05 (`transport: sse`), for servers that still
speak it: a GET opens the event stream, whose first event (`endpoint`) names where to POST messages; every message
from the server, answers included, arrives on that stream.

`SseServer` is the pool's session for such a server (a `channel.MessageChannel`, as a stdio process is): the same
per-principal isolation, one stream and one backend session each. The stream is opened on first use (with the
server's credential headers, on the GET and on every POST) and the `initialize` handshake made on it; when it ends,
every request in flight fails at once, the catalog is told (its tools leave the lists until it answers again), and
the next request opens a new one. The POST endpoint must be on the stream's own origin: a server that names another
would have the gateway send its credentials there, and is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from virtual_mcp.errors import UpstreamProtocolError, UpstreamUnavailable
from virtual_mcp.fields import check_headers
from virtual_mcp.outbound.scrubber import Scrubber
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream import answers
from virtual_mcp.upstream.backend import Relays
from virtual_mcp.upstream.capabilities import NONE, Capabilities
from virtual_mcp.upstream.channel import MessageChannel, Spawn
from virtual_mcp.upstream.entries import EntryChecks
from virtual_mcp.upstream.era import Era, Negotiated
from virtual_mcp.upstream.limits import AnswerTooLarge, capped_lines, read_capped
from virtual_mcp.upstream.wire import CLIENT_INFO, LEGACY_VERSION, iter_sse_events

logger = logging.getLogger(__name__)
_CONNECT_DEADLINE = 10.0  # the stream's endpoint event and the handshake


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


class SseServer(MessageChannel):
    def __init__(
        self,
        ref: ServerRef,
        url: str,
        http: httpx.AsyncClient,
        *,
        headers: Mapping[str, str],
        secrets: Iterable[str],
        spawn: Spawn,
        on_list_changed: Callable[[], None],
        on_negotiated: Callable[[Negotiated], None],
        max_answer_bytes: int,
        entries: EntryChecks | None = None,
        listen: bool = True,
        declared: Capabilities = NONE,
    ) -> None:
        super().__init__(ref, entries, declared, spawn=spawn, on_list_changed=on_list_changed)
        self.url = url
        self._http = http
        self._headers = dict(headers)
        check_headers(self._headers, ref.key)
        self._scrubber = Scrubber(secrets)
        self._on_negotiated = on_negotiated
        self._max_answer = max_answer_bytes
        self._listen = listen
        self._lock = anyio.Lock()
        self._endpoint: str | None = None
        self._ready = False
        self._scope: anyio.CancelScope | None = None
        self._closed = False
        self.capabilities: dict[str, Any] = {}

    @property
    def listens(self) -> bool:
        return self._listen

    def use_headers(self, headers: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        if headers != self._headers:
            check_headers(headers, self.ref.key)
            self._headers = dict(headers)
            self._scrubber = self._scrubber.rotated(secrets)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamUnavailable(self.ref.key, "its session was closed; retry the request")

    async def aclose(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    # -- the stream ----------------------------------------------------------------------------------------------

    async def _ready_to_send(self) -> None:
        """(`headers` of a request, Mcp-Param, have no meaning in this protocol: they are not sent.)"""
        await self._connected()

    async def _connected(self) -> None:
        async with self._lock:
            if self._ready and self._endpoint is not None:
                return
            opened = anyio.Event()
            failure: list[str] = []
            scope = self._scope = anyio.CancelScope()
            self._spawn(lambda: self._stream(scope, opened, failure))
            try:
                with anyio.fail_after(_CONNECT_DEADLINE):
                    await opened.wait()
                    if self._endpoint is None:
                        raise UpstreamUnavailable(self.ref.key, failure[0] if failure else "its stream ended")
                    declared = dict(self._declared)
                    params = {"protocolVersion": LEGACY_VERSION, "capabilities": declared, "clientInfo": CLIENT_INFO}
                    result = await self._call("initialize", params, Relays())
                    await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            except TimeoutError:
                scope.cancel()
                raise UpstreamUnavailable(self.ref.key, "its event stream did not open in time") from None
            except BaseException:
                scope.cancel()
                raise
            version = result.get("protocolVersion")
            if not isinstance(version, str) or version in MODERN_PROTOCOL_VERSIONS:
                scope.cancel()
                raise UpstreamProtocolError(self.ref.key, "initialize result has no usable protocolVersion")
            capabilities, info = result.get("capabilities"), result.get("serverInfo")
            self.capabilities = capabilities if isinstance(capabilities, dict) else {}
            self._ready = True
            self._on_negotiated(
                Negotiated(Era.LEGACY, version, self.capabilities, info if isinstance(info, dict) else {})
            )
            logger.info("backend %s speaks %s over HTTP+SSE", self.ref, version)

    async def _stream(self, scope: anyio.CancelScope, opened: anyio.Event, failure: list[str]) -> None:
        reason = "its event stream ended"
        was_ready = False
        try:
            with scope:
                headers = {**self._headers, "accept": "text/event-stream"}
                timeout = httpx.Timeout(10, read=None)
                async with self._http.stream("GET", self.url, headers=headers, timeout=timeout) as response:
                    if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
                        "text/event-stream"
                    ):
                        reason = f"its event stream was refused with HTTP {response.status_code}"
                        return
                    lines = capped_lines(response.aiter_raw(), self._max_answer)
                    async for event, data in iter_sse_events(lines, self._max_answer):
                        if event == "endpoint" and self._endpoint is None:
                            endpoint = urljoin(self.url, data.strip())
                            if _origin(endpoint) != _origin(self.url):
                                reason = "it named a message endpoint on another origin"
                                return
                            self._endpoint = endpoint
                            opened.set()
                        elif event == "message" and self._endpoint is not None:
                            try:
                                message = answers.parse(data, self._scrubber)
                            except ValueError:
                                reason = "it sent an event that is not JSON-RPC"
                                return
                            if isinstance(message, dict):
                                was_ready = was_ready or self._ready
                                await self._dispatch(message)
        except (httpx.HTTPError, AnswerTooLarge) as exc:
            reason = f"its event stream failed: {type(exc).__name__}"
        except Exception:  # runs in the gateway's task group: nothing here may end the gateway
            logger.exception("backend %s: reading its event stream failed", self.ref)
            reason = "the gateway could not read its event stream"
        finally:
            failure.append(reason)
            if self._scope is scope:  # (a newer stream is not this one's to close)
                self._endpoint = None
                self._ready = False
            opened.set()
            self._fail_pending(reason)
            if was_ready and not self._closed:
                logger.warning("backend %s: %s; it is reconnected when next needed", self.ref, reason)
                self._on_list_changed()

    async def _send(self, message: Mapping[str, Any]) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            raise UpstreamUnavailable(self.ref.key, "its event stream is not open")
        headers = {**self._headers, "content-type": "application/json"}
        try:
            async with self._http.stream("POST", endpoint, content=json.dumps(message), headers=headers) as response:
                await read_capped(response.aiter_raw(), 64 * 1024, None)
        except AnswerTooLarge:
            raise UpstreamProtocolError(self.ref.key, "answered a message with too large a body") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.ref.key, f"cannot send to it: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise UpstreamUnavailable(self.ref.key, f"refused a message with HTTP {response.status_code}")

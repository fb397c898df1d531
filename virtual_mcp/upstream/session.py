"""One long-lived MCP connection to one backing server, speaking whichever era the backend speaks.

Requests and results travel as raw JSON-RPC dicts: the gateway passes results through without re-modelling
them. The era is negotiated once (a `server/discover` probe, falling back to the `initialize` handshake) and
renegotiated transparently when a legacy session expires (HTTP 404) or the backend restarts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from functools import partial
from secrets import randbelow
from typing import Any

import anyio
import httpx
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from virtual_mcp.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamUnavailable,
)
from virtual_mcp.fields import check_headers
from virtual_mcp.outbound.scrubber import Scrubber
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream import answers
from virtual_mcp.upstream.backend import BackendSession, NotificationHandler, Relays, RequestHandler, Wants, unwrap
from virtual_mcp.upstream.capabilities import NONE, Capabilities
from virtual_mcp.upstream.entries import EntryChecks
from virtual_mcp.upstream.era import Era, Negotiated
from virtual_mcp.upstream.http1 import Broken, ConnectFailed, Dropped, Http1Pool, proxied, target
from virtual_mcp.upstream.limits import AnswerTooLarge, capped_lines, read_capped
from virtual_mcp.upstream.shared import Handshake, Shared
from virtual_mcp.upstream.wire import (
    ACCEPT,
    CLIENT_INFO,
    LEGACY_VERSION,
    MODERN_VERSION,
    Cursor,
    iter_sse_messages,
    modern_headers,
    modern_params,
)

logger = logging.getLogger(__name__)
_HANDSHAKE_SUBSCRIBE = 30.0  # resources/subscribe on the side session (the caller's own deadline applies too)

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class _SessionExpired(Exception):
    """A legacy backend forgot our session (404): renegotiate and resend."""


class _ConnectionDropped(Exception):
    """The connection closed before any response byte arrived (typically a pooled connection the backend closed)."""


_RESUMES = 5  # times a stream that ended before its answer is resumed
_STREAM_TRIES = 5  # times a GET stream refused (409) right after its holder let it go is asked again
_ASKED_ELSEWHERE = 2.0  # seconds a replica with nobody to ask leaves the other replicas to take a backend's request
_ASKER = "\0asker"  # (not a watcher's key) who takes a backend's request outside a call

# Requests without side effects: resent once when a pooled connection turns out to be dead.
_SAFE_TO_RESEND = frozenset(
    {"tools/list", "resources/list", "resources/templates/list", "resources/read", "prompts/list", "prompts/get"}
)


class UpstreamSession(BackendSession):
    def __init__(
        self,
        ref: ServerRef,
        url: str,
        http: httpx.AsyncClient,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        spawn: Spawn | None = None,
        on_list_changed: Callable[[], None] | None = None,
        listen: bool = True,
        fast: Http1Pool | None = None,
        max_answer_bytes: int = 8 * 1024 * 1024,
        entries: EntryChecks | None = None,
        learned: Negotiated | None = None,
        on_negotiated: Callable[[Negotiated], None] | None = None,
        declared: Capabilities = NONE,
        shared: Shared | None = None,
    ) -> None:
        super().__init__(ref, entries, declared)
        self.url = url
        # A 2025-11-25 session the fleet's replicas hold as one (upstream/shared.py): `_in_fleet` is the handshake
        # in use as the fleet's (None: this replica's own, opened while the fleet could not be told, or not shared).
        self._shared = shared
        self._in_fleet: Handshake | None = None
        self._stream_scope: anyio.CancelScope | None = None  # the GET stream this replica holds
        self._stream_elsewhere = False  # the backend said another replica holds it (409): take it when it is free
        self._stream_tries = 0  # 409s still to try again after, each a moment later (the holder just let it go)
        self._http = http
        # Requests go over the lean HTTP/1.1 pool unless the environment routes this URL through a proxy.
        self._fast = fast if fast is not None and not proxied(url) else None
        self._target = target(url) if self._fast is not None else None
        self._base_headers = dict(headers or {})
        check_headers(self._base_headers, ref.key)
        # The secret values among those headers: removed from every message the backend sends back.
        self._scrubber = Scrubber(secrets)
        self._spawn = spawn
        self._on_list_changed = on_list_changed
        self._max_answer = max_answer_bytes
        self._learned = learned
        self._on_negotiated = on_negotiated
        # Replicas sharing a session send requests on it at once: each numbers its own from a random block, so no
        # two replicas' requests in flight on the session carry the same id (the backend answers by id).
        self._ids = itertools.count(1 if shared is None else 1 + randbelow(2**31) * 2**21)
        self._lock = anyio.Lock()
        self._generation = 0
        self.era: Era | None = None
        self.protocol_version: str | None = None
        self.session_id: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] | None = None
        self._listening = False
        self._stream_tried = anyio.Event()  # set once its first GET stream was answered (open, or refused)
        self._closed = False
        self._resource_listens: dict[str, anyio.CancelScope] = {}  # 2026-07-28: a listen stream per resource
        # A 2026-07-28 backend without `subscriptions/listen` that also speaks the handshake era: its resources are
        # subscribed to on a 2025-11-25 session of the same credential, made for that (`_subscribe_by_handshake`).
        self._handshake: UpstreamSession | None = None
        self._by_handshake: set[str] = set()
        # Only one session per backend holds a standing list_changed stream; per-caller sessions do not.
        self._listen = listen

    @property
    def listens(self) -> bool:
        return self._listen

    @property
    def closed(self) -> bool:
        return self._closed

    def use_headers(self, headers: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        """Send these headers from now on (an access token rotated under the same credential identity)."""
        if headers != self._base_headers:
            check_headers(headers, self.ref.key)
            self._base_headers = dict(headers)
            self._scrubber = self._scrubber.rotated(secrets)
            if self._handshake is not None:
                self._handshake.use_headers(headers, secrets)

    # -- public API -----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            # The pool closed it (idle, or to make room) after handing it out: a new backend session opened here
            # would belong to nobody, and never be closed.
            raise UpstreamUnavailable(self.ref.key, "its session was closed to make room; retry the request")

    async def _exchange(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        relays: Relays,
        headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return await self._request_with_recovery(method, params, relays, headers, meta)

    async def aclose(self) -> None:
        """End the backend session politely (DELETE for a legacy session) and stop listening. A session the fleet
        holds is ended only by the last replica to let it go."""
        self._closed = True
        for scope in self._resource_listens.values():
            scope.cancel()
        if self._stream_scope is not None:
            self._stream_scope.cancel()  # (the fleet is told the stream is free as it ends)
        if self.era is Era.LEGACY and self.session_id:
            with anyio.CancelScope(shield=True):
                for session_id in await self._to_end(self.session_id):
                    await self._end(session_id, self.protocol_version)
        if self._handshake is not None:
            await self._handshake.aclose()
        self.era = None
        self.session_id = None

    async def _to_end(self, mine: str) -> list[str]:
        """The sessions to end at the backend as this one closes: its own, unless it is the fleet's and another
        replica still holds it; and, as the last holder, the fleet's if that is another (the backend forgot this
        one, or this replica opened its own while Redis was unreachable)."""
        if self._shared is None:
            return [mine]
        released = await self._shared.release()
        if released is None:
            if self._in_fleet is None:
                return [mine]  # (opened while the fleet could not be told: this replica's own)
            logger.info("backend %s: not ended (the fleet cannot say whether another replica holds it)", self.ref)
            return []
        last, current = released
        if not last:
            return [] if current == mine else [mine]
        return [mine] if current in (None, mine) else [mine, current]

    async def _end(self, session_id: str, version: str | None) -> None:
        """DELETE the 2025-11-25 session `session_id` at the backend (best effort, at most 2 s)."""
        with anyio.move_on_after(2, shield=True):
            try:
                # The answer's body is not read: whatever the backend says, it costs nothing here.
                headers = self._legacy_headers(session_id, version)
                async with self._http.stream("DELETE", self.url, headers=headers):
                    pass
            except httpx.HTTPError:
                logger.debug("backend %s: could not end its session", self.ref)

    # -- negotiation ----------------------------------------------------------------------------------------

    async def _ensure_connected(self, stale_generation: int | None = None) -> int:
        if self.era is not None and stale_generation is None:
            return self._generation  # the hot path: no lock once connected
        async with self._lock:
            if self._closed:
                raise UpstreamUnavailable(self.ref.key, "its session was closed to make room; retry the request")
            if self.era is not None and (stale_generation is None or stale_generation != self._generation):
                return self._generation
            # The old state stays in place until the new one is complete: requests racing this renegotiation use
            # the old session, get its 404, and come back here to wait for the new one.
            await self._negotiate()
            self._generation += 1
            return self._generation

    async def _negotiate(self) -> None:
        learned, self._learned = self._learned, None  # a renegotiation asks the backend again
        if learned is not None and learned.era is Era.MODERN:
            # Sessionless: nothing to open. What another session learned of this backend holds for this one.
            self.era, self.protocol_version = Era.MODERN, learned.protocol_version
            self.capabilities, self.server_info = learned.capabilities, learned.server_info
            return
        if self._shared is not None and await self._adopt(self._shared):
            return
        if learned is not None:
            try:
                await self._initialize_legacy()  # known to be a 2025-11-25 backend: no server/discover first
                return
            except UpstreamError:
                logger.info("backend %s: initialize failed; asking again which era it speaks", self.ref)
        if await self._try_modern():
            self._negotiated()
            return
        await self._initialize_legacy()

    def _negotiated(self) -> None:
        if self._on_negotiated is not None and self.era is not None and self.protocol_version is not None:
            self._on_negotiated(Negotiated(self.era, self.protocol_version, self.capabilities, self.server_info))

    async def _try_modern(self) -> bool:
        params = modern_params(None)
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "server/discover", "params": params}
        headers = {**self._base_headers, "accept": ACCEPT, **modern_headers("server/discover", params)}
        status, ctype, content = await self._post(body, headers)
        try:
            if status != 200 or not ctype.startswith("application/json"):
                return False
            message = self._parse(content)
        except ValueError:
            return False
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            return False
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or MODERN_VERSION not in versions:
            return False
        self.era = Era.MODERN
        self.protocol_version = MODERN_VERSION
        self.capabilities = result.get("capabilities") or {}
        self.server_info = (result.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo")
        logger.info("backend %s speaks %s", self.ref, MODERN_VERSION)
        return True

    async def _initialize_legacy(self) -> None:
        params = {"protocolVersion": LEGACY_VERSION, "capabilities": dict(self._declared), "clientInfo": CLIENT_INFO}
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "initialize", "params": params}
        headers = {**self._base_headers, "accept": ACCEPT, "content-type": "application/json"}
        try:
            async with self._http.stream("POST", self.url, content=json.dumps(body), headers=headers) as response:
                if response.status_code >= 400:
                    raise UpstreamUnavailable(self.ref.key, f"initialize refused with HTTP {response.status_code}")
                session_id = response.headers.get("mcp-session-id")
                result = await self._read_response(response, body["id"], Relays())
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.ref.key, f"initialize failed: {type(exc).__name__}") from None
        version = result.get("protocolVersion")
        if not isinstance(version, str) or version in MODERN_PROTOCOL_VERSIONS:
            raise UpstreamProtocolError(self.ref.key, "initialize result has no usable protocolVersion")
        capabilities, server_info = result.get("capabilities") or {}, result.get("serverInfo")
        await self._post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {**self._legacy_headers(session_id or "", version), "accept": ACCEPT},
        )
        logger.info("backend %s speaks %s (session %s)", self.ref, version, "yes" if session_id else "none")
        mine = Handshake(
            session_id or "", version, capabilities, server_info if isinstance(server_info, dict) else None
        )
        if self._shared is not None and session_id:
            mine = await self._offer(self._shared, mine)
        self._use(mine)

    def _use(self, handshake: Handshake) -> None:
        self.era = Era.LEGACY
        self.protocol_version = handshake.protocol_version
        self.session_id = handshake.session_id or None
        self.capabilities = handshake.capabilities
        self.server_info = handshake.server_info
        self._negotiated()
        self._maybe_listen()

    async def _adopt(self, shared: Shared) -> bool:
        """Use the session the fleet holds, unless it is the one the backend just forgot (True: adopted)."""
        theirs = await shared.adopt()
        if theirs is None or (self._in_fleet is not None and theirs.token == self._in_fleet.token):
            return False
        self._in_fleet = theirs
        self._use(theirs)
        logger.info("backend %s: using the session another replica opened", self.ref)
        return True

    async def _offer(self, shared: Shared, mine: Handshake) -> Handshake:
        """The session to use after opening `mine`: the fleet's, if another replica's came first (`mine` is then
        ended), else `mine`, shared (or this replica's own while the fleet cannot be told)."""
        agreed = await shared.share(mine, self._in_fleet)
        self._in_fleet = agreed
        if agreed is None or agreed.session_id == mine.session_id:
            return agreed or mine
        logger.info("backend %s: another replica opened the session first; using it", self.ref)
        if self._spawn is not None:
            self._spawn(partial(self._end, mine.session_id, mine.protocol_version))
        return agreed

    async def rejoin(self) -> bool:
        """A session this replica opened while the fleet could not be told (Redis unreachable): offer it to the fleet
        now, or, if the fleet has another, use that one from now on and end this one (only while this one is idle and
        holds no task: a call in flight or a task would be lost). False if the fleet still cannot be told."""
        if self._shared is None or self._in_fleet is not None or self._closed or self.in_flight or self.pinned:
            return True
        if self.era is not Era.LEGACY or not self.session_id or not self.protocol_version:
            return True
        mine = Handshake(self.session_id, self.protocol_version, self.capabilities, self.server_info)
        async with self._lock:
            agreed = await self._shared.share(mine, None)
            if agreed is None:
                return False
            if agreed.session_id == mine.session_id:
                self._in_fleet = agreed
                logger.info("backend %s: the session opened while Redis was unreachable is the fleet's now", self.ref)
                return True
            if self.in_flight or self.pinned or self.session_id != mine.session_id:
                return True  # (busy meanwhile: the next sweep tries again)
            self._in_fleet = agreed
            self._generation += 1
            self._use(agreed)
        logger.info("backend %s: the fleet had opened the session meanwhile; using it", self.ref)
        await self._end(mine.session_id, mine.protocol_version)
        return True

    # -- requests -------------------------------------------------------------------------------------------

    async def _request_with_recovery(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        relays: Relays,
        headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        generation = await self._ensure_connected()
        try:
            return await self._send(method, params, relays, headers, meta)
        except (_SessionExpired, httpx.ConnectError, ConnectFailed):
            # Nothing was executed: the backend restarted or forgot us. Renegotiate once and resend.
            logger.info("backend %s: session lost, reconnecting", self.ref)
        except _ConnectionDropped:
            # The backend closed a pooled connection (e.g. it restarted). Only a request that cannot have had an
            # effect is sent again; a tools/call might have run, so its caller is told instead.
            if method not in _SAFE_TO_RESEND:
                raise UpstreamUnavailable(self.ref.key, f"connection dropped during {method}") from None
            logger.info("backend %s: connection dropped during %s, resending", self.ref, method)
        try:
            await self._ensure_connected(stale_generation=generation)
            return await self._send(method, params, relays, headers, meta)
        except _SessionExpired:
            raise UpstreamUnavailable(self.ref.key, "session expired again right after reconnecting") from None
        except _ConnectionDropped:
            raise UpstreamUnavailable(self.ref.key, f"connection dropped during {method}") from None
        except (httpx.ConnectError, ConnectFailed) as exc:
            raise UpstreamUnavailable(self.ref.key, f"cannot reach backend: {type(exc).__name__}") from None

    async def _send(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        relays: Relays,
        extra_headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if extra_headers:
            check_headers(extra_headers, self.ref.key)
        request_id = next(self._ids)
        # One consistent snapshot: a concurrent renegotiation may replace the session while this request runs.
        era, session_id, version = self.era, self.session_id, self.protocol_version
        if era is Era.MODERN:
            wire_params = modern_params(params, meta, self._declared)
            headers = {**self._base_headers, **(extra_headers or {}), "accept": ACCEPT}
            headers.update(modern_headers(method, wire_params))
        else:
            wire_params = dict(params) if params else {}
            if meta:
                wire_params["_meta"] = {**(wire_params.get("_meta") or {}), **meta}
            headers = {**self._legacy_headers(session_id, version), **(extra_headers or {}), "accept": ACCEPT}
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if wire_params:
            body["params"] = wire_params
        headers["content-type"] = "application/json"
        if self._fast is not None:
            return await self._send_fast(method, body, headers, era, session_id, version, relays)
        received = False
        try:
            async with self._http.stream("POST", self.url, content=json.dumps(body), headers=headers) as response:
                received = True
                if response.status_code == 404 and era is Era.LEGACY and session_id:
                    raise _SessionExpired
                return await self._read_response(response, request_id, relays)
        except anyio.get_cancelled_exc_class():
            if era is Era.LEGACY:
                # The modern era cancels by closing the stream (done above); a legacy backend must be told.
                with anyio.move_on_after(2, shield=True):
                    await self._notify_cancelled(request_id, session_id, version)
            raise
        except httpx.ConnectError:
            raise
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if not received:
                raise _ConnectionDropped from None
            raise UpstreamUnavailable(
                self.ref.key, f"connection failed during {method}: {type(exc).__name__}"
            ) from None
        except (httpx.TimeoutException, httpx.NetworkError) as exc:
            raise UpstreamUnavailable(
                self.ref.key, f"connection failed during {method}: {type(exc).__name__}"
            ) from None

    async def _send_fast(
        self,
        method: str,
        body: dict[str, Any],
        headers: dict[str, str],
        era: Era | None,
        session_id: str | None,
        version: str | None,
        relays: Relays,
    ) -> dict[str, Any]:
        """`_send` over the lean HTTP/1.1 pool, with the same outcomes as over httpx."""
        assert self._fast is not None and self._target is not None
        try:
            async with self._fast.post(self._target, json.dumps(body).encode(), headers) as response:
                if response.status == 404 and era is Era.LEGACY and session_id:
                    # Read whole, the connection stays usable; past the limit it is closed instead.
                    with contextlib.suppress(AnswerTooLarge):
                        await response.read()
                    raise _SessionExpired
                answer_headers = response.headers
                return await self._answer(
                    response.status,
                    answer_headers.get("content-type", ""),
                    response.lines,
                    response.read,
                    body["id"],
                    relays,
                    answer_headers.get("content-encoding", ""),
                )
        except anyio.get_cancelled_exc_class():
            if era is Era.LEGACY:
                with anyio.move_on_after(2, shield=True):
                    await self._notify_cancelled(body["id"], session_id, version)
            raise
        except Dropped:
            raise _ConnectionDropped from None
        except Broken as exc:
            raise UpstreamUnavailable(self.ref.key, f"connection failed during {method}: {exc}") from None

    async def _read_response(self, response: httpx.Response, request_id: Any, relays: Relays) -> dict[str, Any]:
        headers = response.headers
        declared = headers.get("content-length", "")

        async def read() -> bytes:
            size = int(declared) if declared.isdigit() else None
            return await read_capped(response.aiter_raw(), self._max_answer, size)

        def lines() -> AsyncIterator[str]:
            return capped_lines(response.aiter_raw(), self._max_answer)

        return await self._answer(
            response.status_code,
            headers.get("content-type", ""),
            lines,
            read,
            request_id,
            relays,
            headers.get("content-encoding", ""),
        )

    async def _answer(
        self,
        status: int,
        ctype: str,
        lines: Callable[[], AsyncIterator[str]],
        read: Callable[[], Awaitable[bytes]],
        request_id: Any,
        relays: Relays,
        encoding: str = "",
    ) -> dict[str, Any]:
        """The result of `request_id` from an answer's body: an SSE stream (relaying what comes before it) or JSON.

        Every answer is bounded (max_upstream_response_bytes for a JSON body and for each event of a stream, read
        as it arrives) and so is its JSON's depth; past either the caller gets -32012 naming the limit.
        """
        if encoding and encoding.lower() != "identity":
            # Never asked for: decoding it would let a few compressed bytes unpack into gigabytes.
            raise UpstreamProtocolError(self.ref.key, "answered with a Content-Encoding the gateway did not ask for")
        try:
            if ctype.startswith("text/event-stream") and status < 400:
                cursor = Cursor()
                answer = await self._read_stream(lines(), request_id, relays, cursor)
                if answer is not None:
                    return answer
                return await self._resume(request_id, relays, cursor)
            content = await read()
        except AnswerTooLarge as exc:
            raise UpstreamProtocolError(self.ref.key, str(exc)) from None
        except ValueError as exc:
            raise UpstreamProtocolError(self.ref.key, str(exc)) from None
        try:
            message = self._parse(content)
        except answers.AnswerTooDeep as exc:
            raise UpstreamProtocolError(self.ref.key, str(exc)) from None
        except ValueError:
            raise UpstreamProtocolError(
                self.ref.key, f"HTTP {status} with a body that is not JSON-RPC ({ctype or 'no type'})"
            ) from None
        if isinstance(message, dict) and ("result" in message or "error" in message):
            answered = message.get("id")
            if answered != request_id and not (answered is None and "error" in message):
                # A JSON-RPC error with a null id is the backend's word that it could not read the request.
                raise UpstreamProtocolError(self.ref.key, f"HTTP {status} with the answer to another request")
            return self._unwrap(message)
        raise UpstreamProtocolError(self.ref.key, f"HTTP {status} without a JSON-RPC response")

    async def _read_stream(
        self, lines: AsyncIterator[str], request_id: Any, relays: Relays, cursor: Cursor
    ) -> dict[str, Any] | None:
        """The answer to `request_id` from an event stream (relaying what comes first); None if the stream ends
        without it."""
        answer: dict[str, Any] | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as questions:
            try:
                async for message in iter_sse_messages(lines, self._max_answer, self._parse, cursor):
                    if "method" in message and "id" in message and self.era is Era.LEGACY:
                        # A request of its client: answered beside this stream, which reads on (the backend may
                        # withdraw it); the answer POSTed back on its session.
                        questions.start_soon(self.answer_request, relays, message, self._reply)
                    elif "method" in message:
                        await self._on_inbound(message, relays)
                    elif message.get("id") == request_id:
                        answer = message
                        break
            except Exception as exc:  # noqa: BLE001 - raised as itself below, not wrapped in a group
                failure = exc
            if answer is not None or failure is not None:
                questions.cancel_scope.cancel()  # a question outlives not the call it belongs to
            # A stream that ended without the answer (to be resumed): its questions are answered first.
        if failure is not None:
            raise failure
        return self._unwrap(answer) if answer is not None else None

    async def _resume(self, request_id: Any, relays: Relays, cursor: Cursor) -> dict[str, Any]:
        """A stream that ended before its answer, resumed where it stopped (a GET with `Last-Event-ID`, after the
        backend's retry advice), up to `_RESUMES` times: what a 2025-11-25 backend that polls expects of a client.
        A stream without event ids cannot be resumed."""
        for _ in range(_RESUMES):
            if cursor.last_id is None or self.era is not Era.LEGACY or not self.session_id:
                break
            await anyio.sleep(min(cursor.retry_ms if cursor.retry_ms is not None else 1000, 10_000) / 1000)
            headers = {**self._legacy_headers(), "accept": "text/event-stream", "last-event-id": cursor.last_id}
            try:
                async with self._http.stream("GET", self.url, headers=headers) as response:
                    if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
                        "text/event-stream"
                    ):
                        raise UpstreamProtocolError(
                            self.ref.key,
                            f"its stream ended without an answer; resuming it got HTTP {response.status_code}",
                        )
                    lines = capped_lines(response.aiter_raw(), self._max_answer)
                    answer = await self._read_stream(lines, request_id, relays, cursor)
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(self.ref.key, f"resuming its stream failed: {type(exc).__name__}") from None
            if answer is not None:
                return answer
        raise UpstreamProtocolError(self.ref.key, "response stream ended without an answer")

    def _parse(self, raw: bytes | str) -> Any:
        """Every message from the backend is decoded here: bounded in depth, the credentials it was sent removed."""
        echoes = self._scrubber.echoes
        message = answers.parse(raw, self._scrubber)
        if echoes == 0 and self._scrubber.echoes:
            logger.warning("backend %s echoed a credential it was sent; removed from its answers", self.ref)
        return message

    def _unwrap(self, message: dict[str, Any]) -> dict[str, Any]:
        return unwrap(self.ref, message)

    async def _on_inbound(self, message: dict[str, Any], relays: Relays) -> None:
        if "id" in message:
            # A 2025-11-25 backend's requests of its client are answered beside the stream (`_read_stream`). The
            # 2026-07-28 era has no such requests (it asks with an `input_required` result): there is nowhere to
            # send an answer, so none is sent.
            logger.info("backend %s sent a request of its client outside its era; ignored", self.ref)
            return
        method = message.get("method")
        if method in ("notifications/tools/list_changed",):
            self._list_changed()
            return
        if self.withdrawn(message):  # it withdrew a request of its client: the caller is no longer asked
            return
        await relays.notify(message)

    async def _reply(self, body: dict[str, Any]) -> None:
        try:
            await self._post(body, {**self._legacy_headers(), "accept": ACCEPT})
        except UpstreamError:
            logger.info("could not answer a request of %s", self.ref)

    async def _reply_error(self, request_id: Any, code: int, text: str) -> None:
        await self._reply({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": text}})

    async def _notify_cancelled(self, request_id: int, session_id: str | None, version: str | None) -> None:
        body = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "cancelled by the gateway's client"},
        }
        try:
            await self._post(body, {**self._legacy_headers(session_id, version), "accept": ACCEPT})
        except UpstreamError:
            logger.debug("could not forward cancellation to %s", self.ref)

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, bytes]:
        """POST `body`; the answer's status, content type and body (bounded: past the limit, -32012)."""
        headers = {**headers, "content-type": "application/json"}
        try:
            async with self._http.stream("POST", self.url, content=json.dumps(body), headers=headers) as response:
                declared = response.headers.get("content-length", "")
                content = await read_capped(
                    response.aiter_raw(), self._max_answer, int(declared) if declared.isdigit() else None
                )
                return response.status_code, response.headers.get("content-type", ""), content
        except AnswerTooLarge as exc:
            raise UpstreamProtocolError(self.ref.key, str(exc)) from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.ref.key, f"cannot reach backend: {type(exc).__name__}") from None

    def _legacy_headers(self, session_id: str | None = None, version: str | None = None) -> dict[str, str]:
        """Headers of a 2025-11-25 request: of the current session, or of the one given."""
        headers = dict(self._base_headers)
        session_id = session_id if session_id is not None else self.session_id
        version = version if version is not None else self.protocol_version
        if session_id:
            headers["mcp-session-id"] = session_id
        if version:
            headers["mcp-protocol-version"] = version
        return headers

    # -- resource subscriptions of a 2026-07-28 backend ------------------------------------------------------

    async def speaks_modern(self) -> bool:
        await self._ensure_connected()
        return self.era is Era.MODERN

    async def listen_resource(self, uri: str) -> None:
        """Hold a `subscriptions/listen` stream for `uri` (its updates to the watcher) until `stop_listening`; returns
        once the backend acknowledged it. A backend that has no `subscriptions/listen` is asked on a 2025-11-25
        session instead, if it speaks that era too. Raises UpstreamProtocolError if the backend does not honour
        it either way."""
        try:
            await self._listen_resource(uri)
        except ListenNotOffered as refused:
            try:
                await self._subscribe_by_handshake(uri)
            except UpstreamError as exc:
                logger.info("backend %s: resources/subscribe on a 2025-11-25 session failed: %s", self.ref, exc)
                raise refused from None

    async def _subscribe_by_handshake(self, uri: str) -> None:
        side = self._handshake
        if side is None or side.closed:
            side = self._handshake = UpstreamSession(
                self.ref,
                self.url,
                self._http,
                headers=self._base_headers,
                spawn=self._spawn,
                listen=False,
                max_answer_bytes=self._max_answer,
                learned=Negotiated(Era.LEGACY, LEGACY_VERSION, {}, None),  # the handshake, not server/discover
                declared=self._declared,
            )
            side._scrubber = self._scrubber
            side.watch("updates", self._watched)  # its GET stream's updates are this session's
        await side.request("resources/subscribe", {"uri": uri}, timeout=_HANDSHAKE_SUBSCRIBE)
        if side.era is not Era.LEGACY:
            raise UpstreamProtocolError(self.ref.key, "speaks no 2025-11-25 to subscribe on")
        self._by_handshake.add(uri)
        # Its updates come on that session's GET stream: subscribed once the stream is there to carry them (a
        # backend drops what it would send on a stream not yet open).
        with anyio.move_on_after(_HANDSHAKE_SUBSCRIBE):
            await side._stream_tried.wait()

    async def _unsubscribe_by_handshake(self, uri: str) -> None:
        side = self._handshake
        if side is None or side.closed:
            return
        with contextlib.suppress(UpstreamError):
            await side.request("resources/unsubscribe", {"uri": uri}, timeout=_HANDSHAKE_SUBSCRIBE)

    async def _listen_resource(self, uri: str) -> None:
        if uri in self._resource_listens:
            return
        scope = self._resource_listens[uri] = anyio.CancelScope()
        acknowledged = anyio.Event()
        failure: list[UpstreamError] = []
        if self._spawn is None:
            raise UpstreamProtocolError(self.ref.key, "cannot hold a listen stream here")
        self._spawn(partial(self._listen_modern, uri, scope, acknowledged, failure))
        await acknowledged.wait()
        if failure:
            raise failure[0]

    def stop_listening(self, uri: str) -> None:
        scope = self._resource_listens.pop(uri, None)
        if scope is not None:
            scope.cancel()
        if uri in self._by_handshake and self._spawn is not None:
            self._by_handshake.discard(uri)
            self._spawn(partial(self._unsubscribe_by_handshake, uri))

    async def _listen_modern(
        self, uri: str, scope: anyio.CancelScope, acknowledged: anyio.Event, failure: list[UpstreamError]
    ) -> None:
        params = modern_params({"notifications": {"resourceSubscriptions": [uri]}}, None, self._declared)
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": "subscriptions/listen", "params": params}
        headers = {**self._base_headers, "accept": ACCEPT, "content-type": "application/json"}
        headers.update(modern_headers("subscriptions/listen", params))
        try:
            with scope:
                async with self._http.stream(
                    "POST", self.url, content=json.dumps(body), headers=headers, timeout=httpx.Timeout(5, read=None)
                ) as response:
                    if response.status_code != 200 or "text/event-stream" not in response.headers.get(
                        "content-type", ""
                    ):
                        said = await read_capped(response.aiter_raw(), 64 * 1024, None)
                        raise ListenNotOffered(self.ref.key, _no_listen(response.status_code, said))
                    lines = capped_lines(response.aiter_raw(), self._max_answer)
                    async for message in iter_sse_messages(lines, self._max_answer, self._parse):
                        method = message.get("method")
                        if method == "notifications/subscriptions/acknowledged":
                            honored = ((message.get("params") or {}).get("notifications") or {}).get(
                                "resourceSubscriptions"
                            )
                            if not isinstance(honored, list) or uri not in honored:
                                raise UpstreamProtocolError(self.ref.key, "does not offer updates of that resource")
                            acknowledged.set()
                        elif method == "notifications/resources/updated" and acknowledged.is_set():
                            await self._watched(message)
                        elif "error" in message:
                            self._unwrap(message)
        except UpstreamError as exc:
            failure.append(exc)
        except (httpx.HTTPError, ValueError, AnswerTooLarge) as exc:
            failure.append(UpstreamUnavailable(self.ref.key, f"subscriptions/listen failed: {type(exc).__name__}"))
        finally:
            if not acknowledged.is_set() and not failure:
                failure.append(UpstreamProtocolError(self.ref.key, "subscriptions/listen ended unacknowledged"))
            acknowledged.set()
            if self._resource_listens.get(uri) is scope:
                del self._resource_listens[uri]

    # -- list_changed ---------------------------------------------------------------------------------------

    def _list_changed(self) -> None:
        if self._on_list_changed is not None:
            self._on_list_changed()

    def watch(self, key: str, handler: NotificationHandler, wants: Wants | None = None) -> None:
        super().watch(key, handler, wants)
        self._maybe_listen()

    def watch_requests(self, key: str, handler: RequestHandler) -> None:
        super().watch_requests(key, handler)
        self._maybe_listen()

    async def _answer_outside(self, message: dict[str, Any]) -> None:
        try:
            shared = self._shared if self._in_fleet is not None else None
            if shared is not None and not self._askers:
                # Nobody here to ask: a caller of the principal on another replica may be. The first to take it
                # answers (any replica can: the session is the fleet's); if none does, it is refused here.
                message_id = await shared.fan_out(message, self.session_id or "")
                if message_id is not None:
                    await anyio.sleep(_ASKED_ELSEWHERE)
                    if await shared.first(message_id, _ASKER) is False:
                        return
            await self.answer_request(self.outside(), message, self._reply)
        except Exception:  # runs in the gateway's task group: nothing here may end the gateway
            logger.exception("backend %s: answering its request outside a call failed", self.ref)

    def _maybe_listen(self) -> None:
        tools_cap = self.capabilities.get("tools")
        wanted = self.watched or (self._listen and isinstance(tools_cap, dict) and bool(tools_cap.get("listChanged")))
        if not wanted or self._spawn is None or self._listening or self._closed or self.era is not Era.LEGACY:
            return
        if not self.session_id:
            return
        self._listening = True
        self._spawn(self._listen_legacy)

    async def _listen_legacy(self) -> None:
        """Hold the standalone GET stream open for list_changed until the session ends."""
        session_id = self.session_id
        headers = {**self._legacy_headers(), "accept": "text/event-stream"}
        elsewhere = False  # another replica holds this session's stream (the backend allows one)
        held = False
        scope = self._stream_scope = anyio.CancelScope()
        try:
            with scope:
                async with await self._open_stream(headers) as resp:
                    self._stream_tried.set()
                    if resp.status_code == 409 and self._in_fleet is not None:
                        elsewhere = self._stream_elsewhere = True
                        return
                    self._stream_elsewhere = False
                    if resp.status_code != 200:
                        return
                    held = True
                    lines = capped_lines(resp.aiter_raw(), self._max_answer)
                    async for message in iter_sse_messages(lines, self._max_answer, self._parse):
                        if message.get("method") == "notifications/tools/list_changed":
                            self._list_changed()
                        elif "id" in message and "method" in message:
                            # A request of its client outside any call: to a caller watching this session, answered
                            # off this stream (a person may take minutes).
                            if self._spawn is not None:
                                self._spawn(partial(self._answer_outside, message))
                        elif "method" in message and not self.withdrawn(message):
                            await self._heard_on_stream(message)
        except (httpx.HTTPError, ValueError, AnswerTooLarge):
            logger.debug("backend %s: list_changed stream ended", self.ref)
        finally:
            if self._stream_scope is scope:
                self._stream_scope = None
            self._stream_tried.set()
            self._listening = False
            if held and self._shared is not None and self._in_fleet is not None and self._spawn is not None:
                self._spawn(self._shared.stream_free)  # another replica watching the session takes it
            if not elsewhere and not self._closed and self.session_id == session_id:
                # The stream broke while the session looked alive: make the next request renegotiate,
                # and tell the catalog its view may be stale.
                self._list_changed()
            elif not self._closed and self.session_id != session_id:
                self._maybe_listen()  # the session moved on (renegotiated, or the fleet's now): its stream

    async def _heard_on_stream(self, message: dict[str, Any]) -> None:
        """A notification read from the GET stream: to this replica's watchers, and, for a session the fleet holds,
        to the other replicas' (each watcher of the fleet takes it once)."""
        shared = self._shared if self._in_fleet is not None else None
        message_id = await shared.fan_out(message, self.session_id or "") if shared is not None else None
        if shared is not None and message_id is not None:
            await self._watched(message, partial(shared.first, message_id))
        else:
            await self._watched(message)

    async def heard_elsewhere(self, message_id: str, message: dict[str, Any], held: str) -> None:
        """A message another replica read from this session's GET stream (`held`: which backend session's): a
        notification for this replica's watchers, or a request of its client that replica has nobody to ask
        (`_answer_outside` there). Ignored if this replica holds another backend session (a stale one)."""
        shared = self._shared
        if shared is None or self._in_fleet is None or self._closed or not self.watched:
            return
        if not shared.names(held, self.session_id):
            return
        try:
            message = self._parse(json.dumps(message))  # what this replica's credentials are removed from too
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "id" in message and "method" in message:
            if self._askers and await shared.first(message_id, _ASKER) is True:
                try:
                    await self.answer_request(self.outside(), message, self._reply)
                except Exception:  # runs in the gateway's task group: nothing here may end the gateway
                    logger.exception("backend %s: answering its request outside a call failed", self.ref)
        elif not self.withdrawn(message):
            await self._watched(message, partial(shared.first, message_id))

    async def _open_stream(self, headers: dict[str, str]) -> _Streamed:
        """The GET stream's response (to enter). After the holder let it go, a 409 is asked again a few times: the
        backend may not have seen the holder's stream close yet."""
        while True:
            request = self._http.build_request("GET", self.url, headers=headers, timeout=httpx.Timeout(5, read=None))
            response = await self._http.send(request, stream=True)
            if response.status_code != 409 or self._stream_tries <= 0:
                self._stream_tries = 0
                return _Streamed(response)
            await response.aclose()
            self._stream_tries -= 1
            await anyio.sleep(0.1 * (_STREAM_TRIES - self._stream_tries))

    def take_stream(self, freed: bool = False) -> None:
        """Hold this session's GET stream here if anyone here watches it and the backend refused it because another
        replica held it (`freed`: that replica just let it go)."""
        if self._in_fleet is not None and not self._closed and self._stream_elsewhere:
            if freed:
                self._stream_tries = _STREAM_TRIES
            self._maybe_listen()

    async def holds_fleet_session(self, session_id: str) -> bool:
        await self._ensure_connected()
        return self._in_fleet is not None and self.session_id == session_id

    @property
    def fleet_session_id(self) -> str | None:
        return self.session_id if self._in_fleet is not None else None

    @property
    def fleet_name(self) -> str | None:
        """How the fleet names this session (None: not one the fleet may share)."""
        return self._shared.digest if self._shared is not None else None

    @property
    def fleet_hold(self) -> tuple[Shared, str] | None:
        """The fleet's session this one holds, and the token of its handshake (its hold is renewed at each sweep)."""
        if self._shared is None or self._in_fleet is None:
            return None
        return self._shared, self._in_fleet.token


class _Streamed:
    """A streamed response as `async with` takes it (closed at the end)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aenter__(self) -> httpx.Response:
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        await self._response.aclose()


class ListenNotOffered(UpstreamProtocolError):
    """A 2026-07-28 backend answered `subscriptions/listen` with no stream (it has none)."""


def _no_listen(status: int, body: bytes) -> str:
    """Why a backend's answer to subscriptions/listen is no stream, in its own words where it gave a JSON-RPC error."""
    try:
        error = json.loads(body).get("error") or {}
        said = f"{error.get('code')} {str(error.get('message'))[:200]}"
    except (ValueError, AttributeError):
        said = f"HTTP {status}"
    return f"does not offer resource updates (subscriptions/listen: {said})"


__all__ = ["UpstreamRpcError", "UpstreamSession"]

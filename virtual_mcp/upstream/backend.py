"""What every backend session is to the pool, the catalog and the relay, whatever carries its messages (streamable
HTTP: `session.UpstreamSession`; a local process: `stdio.StdioServer`): one request at a time in, its result out,
bounded by a timeout, its lists' entries checked, the calls in flight counted for the pool."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from virtual_mcp.errors import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    AskFailed,
    CannotAsk,
    GatewayError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
)
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.capabilities import NONE, Capabilities
from virtual_mcp.upstream.entries import LISTS, EntryChecks

logger = logging.getLogger(__name__)
NotificationHandler = Callable[[dict[str, Any]], Awaitable[None]]
Wants = Callable[[Mapping[str, Any]], bool]  # whether a watcher would act on a notification
# Answers a request the backend makes of its client while a request of ours runs (elicitation, sampling, roots):
# (method, params) -> the result; raises AskFailed (or any GatewayError) for the error the backend is sent.
RequestHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Relays:
    """Where what a backend sends while a request runs goes: its notifications, and its requests of its client."""

    notification: NotificationHandler | None = None
    request: RequestHandler | None = None

    async def notify(self, message: dict[str, Any]) -> None:
        if self.notification is not None:
            await self.notification(message)

    async def answer(self, ref: ServerRef, message: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON-RPC response to the backend's request `message` (which has an id and a method): the caller's
        answer through `request`, or the error the backend is told. Never raises but for cancellation."""
        request_id = message.get("id")
        method = message.get("method")
        params = message.get("params")
        if self.request is None or not isinstance(method, str):
            error = {"code": METHOD_NOT_FOUND, "message": f"virtual-mcp has no caller to relay {method!r} to"}
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        try:
            result = await self.request(method, params if isinstance(params, dict) else {})
        except AskFailed as exc:
            error = {"code": exc.code, "message": exc.told}
            if exc.data is not None:
                error["data"] = exc.data
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        except GatewayError as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.jsonrpc_code, "message": exc.told}}
        except Exception:  # the relay is the gateway's: whatever fails, the backend gets an answer, not silence
            logger.exception("relaying %s from %s failed", method, ref)
            error = {"code": INTERNAL_ERROR, "message": f"virtual-mcp could not relay {method!r}"}
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


class BackendSession:
    """The shared half of a backend session; a transport implements `_check_open` and `_exchange`."""

    def __init__(self, ref: ServerRef, entries: EntryChecks | None, declared: Capabilities = NONE) -> None:
        self.ref = ref
        # The client capabilities this session declares to a 2025-11-25 backend (its callers'; capabilities.py).
        self._declared = declared
        self._entries = entries
        self.in_flight = 0
        self.last_used = 0.0
        # Until when it holds a caller's task (service/tasks.py, on the monotonic clock): the pool keeps it open,
        # and a stdio process is not started again, until then.
        self.pinned_until = 0.0
        # Whose principal's session this is (None: the server's own, or shared by every caller: pool.py).
        self.owner: str | None = None
        # Where the backend's notifications outside any request go (resource updates, log messages), by the
        # watcher's key: set by `watch`.
        self._watchers: dict[str, NotificationHandler] = {}
        self._wants: dict[str, Wants] = {}
        # Who is asked what the backend asks of its client outside any request (roots/list after its handshake,
        # say), by key: set by `watch_requests`; the newest that can be asked is.
        self._askers: dict[str, RequestHandler] = {}
        self._asking_outside = False
        # The backend's requests of its client being answered now, by their id: it may withdraw one
        # (`notifications/cancelled`), and its caller is then no longer asked.
        self._answering: dict[str, anyio.CancelScope] = {}
        self.ended = anyio.Event()  # set once the pool that closed it saw `aclose` done

    @property
    def listens(self) -> bool:
        """Whether the pool must keep it open however idle (it holds the backend's change stream)."""
        return False

    @property
    def closed(self) -> bool:
        """Whether it was closed (by the pool, or at shutdown): it serves nothing more."""
        return False

    async def holds_fleet_session(self, session_id: str) -> bool:
        """Whether this is (once connected) the backend session `session_id` that the fleet's replicas hold as one
        (upstream/shared.py)."""
        return False

    @property
    def fleet_session_id(self) -> str | None:
        """The backend session id the fleet's replicas hold as one, if this is such a session."""
        return None

    def pin(self, until: float) -> None:
        """Keep it open until `until` (monotonic): it holds a caller's task that lives that long."""
        self.pinned_until = max(self.pinned_until, until)

    @property
    def pinned(self) -> bool:
        return self.pinned_until > time.monotonic()

    def touch(self) -> None:
        """Mark the session used now (the pool hands it out): not idle, and last to be evicted."""
        self.last_used = anyio.current_time()

    def watch(self, key: str, handler: NotificationHandler, wants: Wants | None = None) -> None:
        """Hand the backend's notifications sent outside any request (a 2025-11-25 session's GET stream, a stdio
        process's stdout) to `handler` from now on, as watcher `key` (replacing any under that key), those `wants`
        says it acts on if given; the transport starts listening for them if it was not."""
        self._watchers[key] = handler
        if wants is None:
            self._wants.pop(key, None)
        else:
            self._wants[key] = wants

    def watch_requests(self, key: str, handler: RequestHandler) -> None:
        """Hand the backend's requests of its client made outside any request of ours to `handler` from now on (the
        newest registered first; one raising CannotAsk passes it on to the next)."""
        self._askers[key] = handler

    def watches(self, key: str) -> bool:
        return key in self._watchers or key in self._askers

    def unwatch(self, key: str) -> None:
        self._watchers.pop(key, None)
        self._wants.pop(key, None)
        self._askers.pop(key, None)

    @property
    def watched(self) -> bool:
        return bool(self._watchers or self._askers)

    async def answer_request(
        self, relays: Relays, message: Mapping[str, Any], reply: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Answer the backend's request `message` through `relays` and `reply` with the answer, unless the backend
        withdraws the request meanwhile (then nothing is sent: a withdrawn request is never answered)."""
        key = _request_key(message.get("id"))
        scope = self._answering[key] = anyio.CancelScope()
        try:
            with scope:
                response = await relays.answer(self.ref, message)
            if scope.cancelled_caught:
                logger.info("backend %s withdrew its %s", self.ref, message.get("method"))
                return
            await reply(response)
        finally:
            if self._answering.get(key) is scope:
                del self._answering[key]

    def withdrawn(self, message: Mapping[str, Any]) -> bool:
        """Whether `message` is the backend withdrawing a request of its client being answered (which then stops)."""
        params = message.get("params")
        if message.get("method") != "notifications/cancelled" or not isinstance(params, Mapping):
            return False
        scope = self._answering.get(_request_key(params.get("requestId")))
        if scope is None:
            return False
        scope.cancel()
        return True

    def outside(self) -> Relays:
        """Where a request the backend makes outside any request of ours goes."""
        return Relays(request=self._ask_outside)

    async def _ask_outside(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._asking_outside:  # one at a time: a backend cannot queue questions at its callers
            raise AskFailed(METHOD_NOT_FOUND, f"virtual-mcp relays one question outside a call at a time ({method!r})")
        self._asking_outside = True
        try:
            for handler in reversed(list(self._askers.values())):
                try:
                    return await handler(method, params)
                except CannotAsk:
                    continue
        finally:
            self._asking_outside = False
        raise AskFailed(METHOD_NOT_FOUND, f"virtual-mcp has no caller to relay {method!r} to outside a call")

    async def speaks_modern(self) -> bool:
        """Whether the backend speaks 2026-07-28 (connecting first if need be)."""
        return False

    async def listen_resource(self, uri: str) -> None:
        """2026-07-28: hold a `subscriptions/listen` stream for updates of `uri` (to the watcher)."""
        raise UpstreamProtocolError(self.ref.key, "has no subscriptions/listen")

    def stop_listening(self, uri: str) -> None:
        """End the listen stream of `uri`, if there is one."""

    async def _watched(
        self, message: dict[str, Any], first: Callable[[str], Awaitable[bool | None]] | None = None
    ) -> None:
        """Hand `message` to each watcher; with `first`, only to those it says take it first (a message the fleet's
        replicas each hear: upstream/shared.py)."""
        for key, handler in list(self._watchers.items()):
            wants = self._wants.get(key)
            try:
                if wants is not None and not wants(message):
                    continue
                if first is not None and await first(key) is False:
                    continue
                await handler(message)
            except Exception:  # a watcher's failure is its own: the session and the other watchers go on
                logger.exception("a watcher of %s failed", self.ref)

    def use_headers(self, headers: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        """Send these headers from now on (an access token rotated under the same credential identity)."""

    def use_env(self, env: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        """A stdio process's credential variables from now on (a token rotated under the same identity)."""

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        on_notification: NotificationHandler | None = None,
        headers: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
        on_request: RequestHandler | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its `result`, relaying notifications sent while it runs, and the requests the
        backend makes of its client meanwhile to `on_request` (refused with -32601 without one).

        Raises UpstreamRpcError for a JSON-RPC error from the backend, UpstreamTimeout past `timeout`,
        UpstreamUnavailable when the backend cannot be reached, UpstreamProtocolError for garbage.
        """
        self._check_open()
        self.in_flight += 1
        self.last_used = anyio.current_time()
        try:
            with anyio.fail_after(timeout):
                result = await self._exchange(method, params, Relays(on_notification, on_request), headers, meta)
            if self._entries is not None and method in LISTS:
                self._entries.clean(self.ref, method, result)
            return result
        except TimeoutError:
            raise UpstreamTimeout(self.ref.key, f"no answer to {method} within {timeout:g}s") from None
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        """Raise UpstreamUnavailable if this session may no longer be used."""

    async def _exchange(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        relays: Relays,
        headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        raise NotImplementedError


def _request_key(request_id: object) -> str:
    """One key for an id however the backend spells it (7 and "7" are one request to a JSON peer)."""
    return str(request_id)


def unwrap(ref: ServerRef, message: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-RPC response's `result`; its `error` as UpstreamRpcError."""
    if "error" in message:
        err = message["error"]
        if not isinstance(err, dict):
            raise UpstreamProtocolError(ref.key, "malformed JSON-RPC error")
        code = err.get("code")
        raise UpstreamRpcError(
            code if isinstance(code, int) else -32603, str(err.get("message", "error")), err.get("data")
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise UpstreamProtocolError(ref.key, "JSON-RPC result is not an object")
    return result

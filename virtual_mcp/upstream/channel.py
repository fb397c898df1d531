"""A backend session that is one stream of JSON-RPC messages each way, whatever carries them (a stdio process's
stdin and stdout: `stdio.StdioServer`; the HTTP+SSE transport of 2024-11-05: `sse.SseServer`): requests matched to
their answers by id, progress by token, the backend's requests of its client to the one call in flight that can
relay them, its notifications outside requests to the session's watcher, and every request in flight failed at once
when the connection ends. A transport implements `_send` and calls `_dispatch` for each message it reads and
`_fail_pending` when it ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import Any

import anyio

from virtual_mcp.errors import UpstreamError, UpstreamUnavailable
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.backend import BackendSession, NotificationHandler, Relays, unwrap
from virtual_mcp.upstream.capabilities import Capabilities
from virtual_mcp.upstream.entries import EntryChecks

logger = logging.getLogger(__name__)
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class MessageChannel(BackendSession):
    def __init__(
        self,
        ref: ServerRef,
        entries: EntryChecks | None,
        declared: Capabilities,
        *,
        spawn: Spawn,
        on_list_changed: Callable[[], None],
    ) -> None:
        super().__init__(ref, entries, declared)
        self._spawn = spawn
        self._on_list_changed = on_list_changed
        self._pending: dict[int, tuple[anyio.Event, list[dict[str, Any]], Relays]] = {}
        self._progress: dict[str, NotificationHandler] = {}
        self._next_id = 0

    async def _send(self, message: Mapping[str, Any]) -> None:
        """Write one message to the backend; UpstreamUnavailable if it cannot be."""
        raise NotImplementedError

    async def _ready_to_send(self) -> None:
        """Connect (start the process, open the stream, make the handshake) if not connected yet."""
        raise NotImplementedError

    async def _exchange(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        relays: Relays,
        headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        await self._ready_to_send()
        body = dict(params or {})
        if meta:
            body["_meta"] = {**(body.get("_meta") or {}), **meta}
        return await self._call(method, body, relays)

    def _fail_pending(self, reason: str) -> None:
        """The connection ended: every request in flight fails with `reason`."""
        for event, answer, _ in self._pending.values():
            answer.append({"error": {"code": None, "message": reason}})
            event.set()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if "method" in message:
            if request_id is not None:  # its request of its client: answered by a caller (module docstring)
                self._spawn(partial(self._answer_request, message))
                return
            method = message.get("method")
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            if method == "notifications/tools/list_changed":
                self._on_list_changed()
            elif self.withdrawn(message):  # it withdrew a request of its client: the caller is no longer asked
                return
            elif method == "notifications/progress":
                handler = self._progress.get(str(params.get("progressToken")))
                if handler is not None:
                    try:
                        await handler(message)
                    except Exception:  # a caller's stream that cannot take it: that caller's loss, not the backend's
                        logger.debug("progress of %s not relayed", self.ref, exc_info=True)
            elif (
                method == "notifications/message"
                and self.owner is not None  # one principal's process: a shared one's logs are nobody's call's
                and (relay := self._asker().notification) is not None
            ):
                try:  # a log message while one call is in flight: that call's (as its requests)
                    await relay(message)
                except Exception:  # a caller's stream that cannot take it: that caller's loss, not the backend's
                    logger.debug("a log of %s not relayed", self.ref, exc_info=True)
            else:  # outside any one caller's request: to whoever watches the session (resource updates, logs)
                logger.debug("backend %s: %s", self.ref, method)
                await self._watched(message)
            return
        waiting = self._pending.get(request_id) if isinstance(request_id, int) else None
        if waiting is not None:
            waiting[1].append(message)
            waiting[0].set()

    def _asker(self) -> Relays:
        """Whose caller a request or log message of the backend goes to. These transports carry no link from its
        message to our request that caused it: it goes to the one call in flight, and a request is refused (no
        relay; a log message goes to the session's watchers) when there is none, or several (two callers of a
        shared session: neither may be asked, or told, what belongs to the other's call)."""
        relaying = [relays for _, _, relays in self._pending.values() if relays.request or relays.notification]
        return relaying[0] if len(relaying) == 1 else Relays()

    async def _answer_request(self, message: dict[str, Any]) -> None:
        try:
            relays = self._asker()
            if relays.request is None:  # no one call it can belong to: as outside any call
                relays = self.outside()
            await self.answer_request(relays, message, self._send)
        except UpstreamError:
            logger.info("backend %s: could not answer its request", self.ref)
        except Exception:  # runs in the gateway's task group: nothing here may end the gateway
            logger.exception("backend %s: answering its request failed", self.ref)

    async def _call(self, method: str, params: dict[str, Any], relays: Relays) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        event = anyio.Event()
        answer: list[dict[str, Any]] = []
        self._pending[request_id] = (event, answer, relays)
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None and relays.notification is not None:
            self._progress[str(token)] = relays.notification
        try:
            await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            try:
                await event.wait()
            except anyio.get_cancelled_exc_class():
                cancelled = {"requestId": request_id, "reason": "cancelled by the gateway's client"}
                with anyio.CancelScope(shield=True), anyio.move_on_after(1), contextlib.suppress(UpstreamError):
                    await self._send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancelled})
                raise
        finally:
            self._pending.pop(request_id, None)
            if token is not None:
                self._progress.pop(str(token), None)
        message = answer[0]
        error = message.get("error")
        if isinstance(error, dict) and error.get("code") is None:  # the connection ended under the request
            raise UpstreamUnavailable(self.ref.key, str(error.get("message")))
        return unwrap(self.ref, message)

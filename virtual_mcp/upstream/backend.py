"""What every backend session is to the pool, the catalog and the relay, whatever carries its messages (streamable
HTTP: `session.UpstreamSession`; a local process: `stdio.StdioServer`): one request at a time in, its result out,
bounded by a timeout, its lists' entries checked, the calls in flight counted for the pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio

from virtual_mcp.errors import UpstreamProtocolError, UpstreamRpcError, UpstreamTimeout
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.entries import LISTS, EntryChecks

NotificationHandler = Callable[[dict[str, Any]], Awaitable[None]]


class BackendSession:
    """The shared half of a backend session; a transport implements `_check_open` and `_exchange`."""

    def __init__(self, ref: ServerRef, entries: EntryChecks | None) -> None:
        self.ref = ref
        self._entries = entries
        self.in_flight = 0
        self.last_used = 0.0

    @property
    def listens(self) -> bool:
        """Whether the pool must keep it open however idle (it holds the backend's change stream)."""
        return False

    def touch(self) -> None:
        """Mark the session used now (the pool hands it out): not idle, and last to be evicted."""
        self.last_used = anyio.current_time()

    def use_headers(self, headers: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        """Send these headers from now on (an access token rotated under the same credential identity)."""

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        on_notification: NotificationHandler | None = None,
        headers: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its `result`, relaying notifications sent while it runs.

        Raises UpstreamRpcError for a JSON-RPC error from the backend, UpstreamTimeout past `timeout`,
        UpstreamUnavailable when the backend cannot be reached, UpstreamProtocolError for garbage.
        """
        self._check_open()
        self.in_flight += 1
        self.last_used = anyio.current_time()
        try:
            with anyio.fail_after(timeout):
                result = await self._exchange(method, params, on_notification, headers, meta)
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
        on_notification: NotificationHandler | None,
        headers: Mapping[str, str] | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        raise NotImplementedError


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

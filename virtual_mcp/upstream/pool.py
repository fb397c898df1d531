"""The pool of upstream sessions: one HTTP client for every backend, one long-lived MCP session per backend."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.outbound.credentials import fingerprint
from virtual_mcp.registry import Registry
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.session import UpstreamSession

logger = logging.getLogger(__name__)


class UpstreamPool:
    """Owns the shared `httpx.AsyncClient` (connection reuse, one TLS context) and the sessions built on it."""

    def __init__(
        self,
        registry: Registry,
        settings: GatewaySettings,
        task_group: TaskGroup,
        on_list_changed: Callable[[ServerRef], None] | None = None,
        max_sessions: int = 1024,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._tg = task_group
        self._on_list_changed = on_list_changed
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=settings.connect_timeout_seconds, read=None, write=30, pool=30),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=60),
            follow_redirects=False,
        )
        # Least recently used first; per-caller credentials (passthrough, overrides) make this grow, so it is bounded.
        self._sessions: OrderedDict[tuple[ServerRef, str], UpstreamSession] = OrderedDict()
        self._max_sessions = max_sessions

    def session(self, ref: ServerRef, headers: Mapping[str, str]) -> UpstreamSession:
        """The session for `ref` with these credentials: one per distinct credential, so a backend session is
        never shared across identities (backends bind a session to the credential that opened it)."""
        key = (ref, fingerprint(headers))
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            return session
        remote = self._registry.remotes[ref]
        session = UpstreamSession(
            ref, remote.url, self._http, headers=headers, spawn=self._spawn, on_list_changed=partial(self._changed, ref)
        )
        self._sessions[key] = session
        if len(self._sessions) > self._max_sessions:
            _, evicted = self._sessions.popitem(last=False)
            self._tg.start_soon(evicted.aclose)
        return session

    def open_sessions(self) -> int:
        return sum(1 for s in self._sessions.values() if s.era is not None)

    def _changed(self, ref: ServerRef) -> None:
        if self._on_list_changed is not None:
            self._on_list_changed(ref)

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tg.start_soon(fn)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for session in self._sessions.values():
                    tg.start_soon(session.aclose)
            await self._http.aclose()
        self._sessions.clear()

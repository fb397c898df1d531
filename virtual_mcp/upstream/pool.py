"""The pool of upstream sessions: one HTTP client for every backend, one long-lived MCP session per backend."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.outbound.credentials import Credential
from virtual_mcp.registry import Registry
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.http1 import Http1Pool
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
        max_sessions: int = 256,
        idle_seconds: float = 300.0,
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
        self._fast = Http1Pool(settings.connect_timeout_seconds)
        # Least recently used first; per-caller credentials (passthrough, overrides) make this grow, so it is bounded.
        self._sessions: OrderedDict[tuple[ServerRef, str], UpstreamSession] = OrderedDict()
        self._max_sessions = max_sessions
        self._idle_seconds = idle_seconds

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def session(self, ref: ServerRef, credential: Credential) -> UpstreamSession:
        """The session for `ref` with this credential: one per distinct credential, so a backend session is never
        shared across credentials (backends bind a session to the credential that opened it)."""
        key = (ref, credential.key)
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            session.use_headers(credential.headers, credential.secrets)  # a rotated token on the same identity
            return session
        self._sweep()
        remote = self._registry.remotes[ref]
        session = UpstreamSession(
            ref,
            remote.url,
            self._http,
            headers=credential.headers,
            secrets=credential.secrets,
            spawn=self._spawn,
            on_list_changed=partial(self._changed, ref),
            listen=credential.shared,
            fast=self._fast,
        )
        self._sessions[key] = session
        return session

    def _sweep(self) -> None:
        """Close per-caller sessions idle for a while, and the least recently used idle ones beyond the cap.

        A session with requests in flight is never closed under them; the cap stays well below the HTTP client's
        connection limit, so per-caller credentials cannot starve everyone else's requests of connections.
        """
        now = anyio.current_time()
        over = len(self._sessions) + 1 - self._max_sessions
        for key, session in list(self._sessions.items()):
            if session.in_flight:
                continue
            idle = now - session.last_used > self._idle_seconds and session.last_used > 0
            if over > 0 or (idle and not session.listens):
                del self._sessions[key]
                self._tg.start_soon(session.aclose)
                over -= 1

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
            await self._fast.aclose()
        self._sessions.clear()

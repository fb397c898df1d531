"""The pool of upstream sessions: one HTTP client for every backend, one long-lived MCP session per backend."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from virtual_mcp.config.models import OAuth2AuthData
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import NotSupportedYet
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
        self._sessions: dict[ServerRef, UpstreamSession] = {}

    def session(self, ref: ServerRef) -> UpstreamSession:
        session = self._sessions.get(ref)
        if session is None:
            remote = self._registry.remotes[ref]
            if remote.auth is not None:
                # Outbound credentials arrive with the outbound/ package; until then refuse clearly, per server.
                mode: str = remote.auth.type
                if isinstance(remote.auth, OAuth2AuthData):
                    mode = f"{mode} ({remote.auth.grant_type})"
                raise NotSupportedYet(f"backend {ref.key!r}: outbound auth {mode} is not supported yet")
            session = UpstreamSession(
                ref,
                remote.url,
                self._http,
                spawn=self._spawn,
                on_list_changed=partial(self._changed, ref),
            )
            self._sessions[ref] = session
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

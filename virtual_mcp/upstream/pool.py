"""The pool of upstream sessions: one HTTP client for every backend, and the MCP sessions built on it.

Whose session serves a call is the isolation model. A 2025-11-25 backend session carries state the backend keeps
for it (what a tool stored, a session resource, subscriptions), so it belongs to one principal and one credential:
the key is (server, principal, credential). A server configured `upstream_session: shared` says it keeps no such
state, and every caller of its configured credential then shares one session. Background work (the tool catalog
fetched with the server's own credential, the list_changed stream) uses the server's own session, which no caller's
call ever uses. A 2026-07-28 backend is sessionless: each request stands alone and there is no session state to
keep apart, but the same keys apply (the objects are cheap, and what one of them learned of the backend is shared).

Sessions are bounded per principal and in all. A principal over its quota loses its own least recently used idle
session; at the total cap a newcomer takes one from the principal holding the most, never from one holding fewer;
a session with a call in flight, or holding a caller's task (service/tasks.py), is never closed; other sessions idle
past `upstream_session_idle_seconds` are closed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import UpstreamSessionsExhausted
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import Credential
from virtual_mcp.registry import Registry, StdioCommand
from virtual_mcp.tls import client_context
from virtual_mcp.types import Principal, ServerRef
from virtual_mcp.upstream.backend import BackendSession
from virtual_mcp.upstream.capabilities import NONE, Capabilities, signature
from virtual_mcp.upstream.cookies import no_cookie_jar
from virtual_mcp.upstream.entries import EntryChecks
from virtual_mcp.upstream.era import Negotiated
from virtual_mcp.upstream.http1 import Http1Pool
from virtual_mcp.upstream.session import UpstreamSession
from virtual_mcp.upstream.shared import Shared, SharingFleet
from virtual_mcp.upstream.sse import SseServer
from virtual_mcp.upstream.stdio import StdioServer

logger = logging.getLogger(__name__)

# Whose session: a principal's subject, or None for the server's own (background work, `upstream_session: shared`).
Owner = str | None
SessionKey = tuple[ServerRef, Owner, str, str]  # (server, owner, credential key, relayed capabilities' signature)


class UpstreamPool:
    """Owns the shared `httpx.AsyncClient` (connection reuse, one TLS context, no cookie jar) and the sessions."""

    def __init__(
        self,
        registry: Registry,
        settings: GatewaySettings,
        on_list_changed: Callable[[ServerRef], None] | None = None,
        metrics: Metrics | None = None,
        stdio_env: Callable[[ServerRef], tuple[dict[str, str], frozenset[str]]] | None = None,
        fleet: SharingFleet | None = None,
    ) -> None:
        self._registry = registry
        self._fleet = fleet
        self._fleet_held: dict[str, SessionKey] = {}  # a fleet-shared session's digest: its key here
        self._stdio_env = stdio_env
        self._settings = settings
        self._tg: TaskGroup | None = None
        self._on_list_changed = on_list_changed
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=settings.connect_timeout_seconds, read=None, write=30, pool=30),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=60),
            follow_redirects=False,
            cookies=no_cookie_jar(),
            verify=client_context(),
            headers={"accept-encoding": "identity"},
        )
        limits = settings.limits
        self._max_answer = limits.max_upstream_response_bytes
        self._fast = Http1Pool(settings.connect_timeout_seconds, max_answer_bytes=self._max_answer)
        self._entries = EntryChecks(
            limits.max_backend_list_entries,
            limits.max_upstream_response_bytes,
            (lambda ref, kind, n: metrics.upstream_invalid_entries.labels(ref.key, kind).inc(n)) if metrics else None,
        )
        self._sessions: dict[SessionKey, BackendSession] = {}
        self._owned: dict[str, set[SessionKey]] = {}  # each principal's sessions
        self._owned_count = 0  # callers' sessions; the servers' own (one per server and credential) are not counted
        self._learned: dict[ServerRef, Negotiated] = {}
        self._max_total = limits.max_upstream_sessions
        self._max_owned = limits.upstream_sessions_per_principal
        self._max_processes = limits.max_stdio_processes
        self._idle_seconds = limits.upstream_session_idle_seconds
        # Often enough that a session outlives its idle time by at most half of it (and by at most 30 s).
        self._sweep_period = min(self._idle_seconds / 2, 30.0)
        self._lease = max(3 * self._sweep_period, 10.0)  # a replica's hold of a fleet-shared session, renewed per sweep

    def start(self, task_group: TaskGroup) -> None:
        """Background work (closing idle sessions, backends' change streams) runs in `task_group` from now on."""
        self._tg = task_group
        task_group.start_soon(self._close_idle_forever)

    def _group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the upstream pool is not started")
        return self._tg

    def learned(self, ref: ServerRef) -> Negotiated | None:
        """What the backend said of itself (era, capabilities) the last time a session to it was negotiated."""
        return self._learned.get(ref)

    @property
    def entries(self) -> EntryChecks:
        return self._entries

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def owned_by(self, principal: Principal) -> int:
        return len(self._owned.get(principal.subject, ()))

    def session(
        self,
        ref: ServerRef,
        credential: Credential,
        principal: Principal | None,
        declared: Capabilities = NONE,
    ) -> BackendSession:
        """The session that serves `principal`'s requests to `ref` with `credential` (None: the server's own, for
        background work), declaring `declared` (the caller's relayed client capabilities, normalised) to a
        2025-11-25 backend. Raises UpstreamSessionsExhausted when none can be opened without closing a busy one."""
        remote = self._registry.remotes[ref]
        owner = None if principal is None else principal.subject
        if owner is not None and credential.shared and remote.shared_session:
            owner = None  # the operator says this backend keeps no per-session state
        key = (ref, owner, credential.key, signature(declared))
        session = self._sessions.get(key)
        if session is not None:
            session.touch()
            session.use_headers(credential.headers, credential.secrets)  # a rotated token on the same identity
            session.use_env(credential.env, credential.secrets)  # the same, for a stdio server's process
            return session
        if owner is not None:
            self._make_room(ref, owner)
        # Only the server's own session holds the standing list_changed stream: one per backend, not per caller.
        listen = owner is None and credential.shared
        if remote.stdio is not None:
            # A stdio server's session is its process: each principal's own, as for any backend, unless the operator
            # says it keeps no state (`upstream_session: shared`); counted and closed when idle like the others.
            self._make_process_room(ref)
            session = self._stdio_server(ref, remote.stdio, listen, declared, credential)
        elif remote.sse:
            session = SseServer(
                ref,
                remote.url,
                self._http,
                headers=credential.headers,
                secrets=credential.secrets,
                spawn=self._spawn,
                on_list_changed=partial(self._changed, ref),
                on_negotiated=partial(self._learned.__setitem__, ref),
                max_answer_bytes=self._max_answer,
                entries=self._entries,
                listen=listen,
                declared=declared,
            )
        else:
            session = UpstreamSession(
                ref,
                remote.url,
                self._http,
                headers=credential.headers,
                secrets=credential.secrets,
                spawn=self._spawn,
                on_list_changed=partial(self._changed, ref),
                listen=listen,
                fast=self._fast,
                max_answer_bytes=self._max_answer,
                entries=self._entries,
                learned=self._learned.get(ref),
                on_negotiated=partial(self._learned.__setitem__, ref),
                declared=declared,
                shared=self._shared(key) if owner is not None else None,
            )
        session.touch()
        session.owner = owner
        self._sessions[key] = session
        if owner is not None:
            self._owned.setdefault(owner, set()).add(key)
            self._owned_count += 1
        return session

    def _shared(self, key: SessionKey) -> Shared | None:
        """A principal's 2025-11-25 session over HTTP is the fleet's (one backend session for the whole fleet, not
        one per replica). A stdio process and an HTTP+SSE session are bound to this replica's process or stream."""
        if self._fleet is None:
            return None
        ref, owner, credential, capabilities = key
        shared = self._fleet.shared(json.dumps([ref.key, owner, credential, capabilities]), self._lease)
        self._fleet_held[shared.digest] = key
        return shared

    def heard_elsewhere(self, digest: str, message_id: str, message: dict[str, Any], held: str) -> None:
        """Another replica read `message` from the GET stream of a session the fleet holds (fleet/upstream.py;
        `held`: which backend session's)."""
        session = self._held(digest)
        if session is not None and session.watched:
            self._spawn(partial(session.heard_elsewhere, message_id, message, held))

    def stream_free(self, digest: str) -> None:
        """The replica that held a fleet-shared session's GET stream let it go."""
        session = self._held(digest)
        if session is not None:
            session.take_stream(freed=True)

    def _held(self, digest: str) -> UpstreamSession | None:
        key = self._fleet_held.get(digest)
        session = self._sessions.get(key) if key is not None else None
        return session if isinstance(session, UpstreamSession) else None

    def _stdio_server(
        self, ref: ServerRef, command: StdioCommand, listen: bool, declared: Capabilities, credential: Credential
    ) -> StdioServer:
        env, secrets = self._stdio_env(ref) if self._stdio_env is not None else ({}, frozenset())
        secrets = secrets | credential.secrets
        return StdioServer(
            ref,
            list(command.argv),
            {**env, **credential.env},
            command.cwd,
            spawn=self._spawn,
            on_list_changed=partial(self._changed, ref),
            on_negotiated=partial(self._learned.__setitem__, ref),
            max_answer_bytes=self._max_answer,
            entries=self._entries,
            secrets=secrets,
            listen=listen,
            declared=declared,
        )

    def _make_room(self, ref: ServerRef, owner: str) -> None:
        """Room for one more session of `owner`, closing idle sessions only: first `owner`'s own past its quota,
        then, at the total cap, those idle too long, then one of whoever holds the most (never fewer than `owner`)."""
        mine = self._owned.get(owner, set())
        if len(mine) >= self._max_owned:
            if not self._close_lru(mine):
                raise UpstreamSessionsExhausted(
                    ref.key,
                    f"you hold {len(mine)} backend sessions (limits.upstream_sessions_per_principal), each busy (a "
                    "call in flight, or a task it holds); retry when one ends",
                )
            return
        if self._owned_count < self._max_total:
            return
        self.close_idle()
        if self._owned_count < self._max_total:
            return
        heaviest = max(self._owned.values(), key=len)
        if len(heaviest) > len(mine) and self._close_lru(heaviest):
            return
        if mine and self._close_lru(mine):
            return
        raise UpstreamSessionsExhausted(
            ref.key,
            f"the gateway holds its maximum of {self._max_total} backend sessions (limits.max_upstream_sessions), "
            "none of them idle (a call in flight, or a task it holds); retry shortly",
        )

    def _make_process_room(self, ref: ServerRef) -> None:
        """Room for one more stdio process (at most `limits.max_stdio_processes`), closing the least recently used
        idle caller's process if need be (the servers' own, which hold their tool lists, are never closed)."""
        processes = {key for key, session in self._sessions.items() if isinstance(session, StdioServer)}
        if len(processes) < self._max_processes:
            return
        if not self._close_lru({key for key in processes if not self._sessions[key].listens}):
            raise UpstreamSessionsExhausted(
                ref.key,
                f"the gateway runs its maximum of {self._max_processes} stdio processes (limits.max_stdio_processes), "
                "each busy (a call in flight, or a task it holds); retry shortly",
            )

    def _close_lru(self, keys: set[SessionKey]) -> bool:
        """Close the least recently used of `keys` that is not busy (no call in flight, no task held); False if
        each one is."""
        idle = [key for key in keys if not self._sessions[key].in_flight and not self._sessions[key].pinned]
        if not idle:
            return False
        self._close(min(idle, key=lambda k: self._sessions[k].last_used))
        return True

    def close_idle(self, idle_for: float | None = None) -> list[BackendSession]:
        """Close every session unused for `idle_for` seconds (default `upstream_session_idle_seconds`), but the
        list_changed listeners and the busy ones; those closed (each ends in the background)."""
        cutoff = anyio.current_time() - (self._idle_seconds if idle_for is None else idle_for)
        return [
            self._close(key)
            for key, session in list(self._sessions.items())
            if not session.in_flight and not session.listens and not session.pinned and session.last_used <= cutoff
        ]

    async def end_idle(self, idle_for: float | None = None) -> int:
        """`close_idle`, returning once each session closed has ended (at the backend, or in the fleet)."""
        closed = self.close_idle(idle_for)
        for session in closed:
            await session.ended.wait()
        return len(closed)

    def _close(self, key: SessionKey) -> BackendSession:
        session = self._sessions.pop(key)
        if isinstance(session, UpstreamSession) and session.fleet_name is not None:
            self._fleet_held.pop(session.fleet_name, None)
        owner = key[1]
        if owner is not None:
            keys = self._owned[owner]
            keys.discard(key)
            self._owned_count -= 1
            if not keys:
                del self._owned[owner]
        self._group().start_soon(_end, session)
        return session

    async def _close_idle_forever(self) -> None:
        while True:
            await anyio.sleep(self._sweep_period)
            self.close_idle()
            await self.renew_holds()

    async def renew_holds(self) -> None:
        """Renew this replica's hold of the fleet-shared sessions it has open; take the GET stream of those it
        watches if the replica that held it is gone."""
        if self._fleet is None:
            return
        held = []
        reachable = True
        for key in list(self._fleet_held.values()):
            session = self._sessions.get(key)
            if not isinstance(session, UpstreamSession):
                continue
            hold = session.fleet_hold
            if hold is None and reachable:
                reachable = await session.rejoin()  # (opened while Redis was unreachable; once a sweep if it still is)
                hold = session.fleet_hold
            if hold is not None:
                held.append(hold)
                if session.watched:
                    session.take_stream()
        if held:
            await self._fleet.hold(held)

    def _changed(self, ref: ServerRef) -> None:
        if self._on_list_changed is not None:
            self._on_list_changed(ref)

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._group().start_soon(fn)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for session in self._sessions.values():
                    tg.start_soon(session.aclose)
            await self._http.aclose()
            await self._fast.aclose()
        self._sessions.clear()
        self._owned.clear()


async def _end(session: BackendSession) -> None:
    try:
        await session.aclose()
    finally:
        session.ended.set()

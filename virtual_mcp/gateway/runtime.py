"""The gateway's live state for one configuration: upstream pool, catalog, endpoint views, change buses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged

from virtual_mcp.audit import AuditLog
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.fleet.calls import ReplicaCalls
from virtual_mcp.fleet.events import FleetEvent, FleetEvents, user_digest
from virtual_mcp.fleet.sessions import Notice, SessionFleet
from virtual_mcp.fleet.tasks import TaskFleet
from virtual_mcp.fleet.upstream import Heard, UpstreamFleet
from virtual_mcp.gateway.service.auditing import Auditor
from virtual_mcp.gateway.service.endpoint_view import EndpointView
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.request_state import RequestStates
from virtual_mcp.gateway.service.resource_updates import ResourceUpdates
from virtual_mcp.gateway.service.rounds import Rounds
from virtual_mcp.gateway.service.tasks import TaskRoutes, relays_tasks
from virtual_mcp.gateway.wire.keepalive import Keepalive
from virtual_mcp.gateway.wire.sessions import SessionTable
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.registry import Registry
from virtual_mcp.types import PrincipalKind, ServerRef
from virtual_mcp.upstream.catalog import ToolCatalog
from virtual_mcp.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        registry: Registry,
        settings: GatewaySettings,
        credentials: OutboundCredentials,
        audit_log: AuditLog | None = None,
        revocations: RevocationList | None = None,
        metrics: Metrics | None = None,
        events: FleetEvents | None = None,
        session_fleet: SessionFleet | None = None,
        request_states: RequestStates | None = None,
        replicas: ReplicaCalls | None = None,
        upstream: UpstreamFleet | None = None,
        tasks: TaskFleet | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.credentials = credentials
        self._audit_log = audit_log
        self._revocations = revocations
        self._revocation_round = anyio.Event()  # set when the watcher finishes a look; then replaced
        self._revocation_nudge = anyio.Event()  # set when another process says it revoked something: look now
        self._events = events
        if events is not None:
            credentials.on_connected = self._connected_here
        self._session_fleet = session_fleet
        self._sessions_subscribed = anyio.Event()
        self._calls_subscribed = anyio.Event()
        self._server_refs = {ref.key: ref for ref in registry.remotes}
        self._events_subscribed = anyio.Event()
        # Called whenever this replica learns that something was revoked (what it holds in memory goes).
        self.on_revoked: list[Callable[[], None]] = []
        self.metrics = metrics or Metrics()
        # Nothing to scrub here: the credentials a call presented were removed from its answer where it was read.
        self.auditor = Auditor(audit_log, registry, metrics=self.metrics, known_tool=self._known_tool)
        self.metrics.gauge(
            "vmcp_upstream_sessions", "open MCP sessions to backends", lambda: {(): float(self.open_sessions)}
        )
        if audit_log is not None:
            self.metrics.gauge(
                "vmcp_audit_queue", "audit records waiting to be written", lambda: {(): float(audit_log.pending)}
            )
        self.pool = UpstreamPool(
            registry,
            settings,
            on_list_changed=self._backend_changed,
            metrics=self.metrics,
            stdio_env=credentials.stdio_env,
            fleet=upstream,
        )
        self._upstream = upstream
        self._upstream_subscribed = anyio.Event()
        self.catalog = ToolCatalog(self.pool, settings, on_change=self._catalog_changed, metrics=self.metrics)
        # What each endpoint's callers see and where their calls go.
        self.views = {
            path: EndpointView(ep, registry, self.catalog, credentials, self._relays_tasks)
            for path, ep in registry.endpoints.items()
        }
        self._tg: TaskGroup | None = None
        # One bus per endpoint carries "tools changed" to its 2026-07-28 listen streams.
        self.buses: dict[str, InMemorySubscriptionBus] = {p: InMemorySubscriptionBus() for p in registry.endpoints}
        self.keepalive = Keepalive()  # for long event-stream answers
        # The 2025-11-25 client sessions of each endpoint.
        # The 2025-11-25 client sessions of each endpoint (with a fleet, continued on any replica).
        self.sessions: dict[str, SessionTable] = {
            p: SessionTable(settings.limits, session_fleet, p) for p in registry.endpoints
        }
        self.metrics.gauge(
            "vmcp_client_sessions",
            "open 2025-11-25 client sessions",
            lambda: {(): float(sum(table.open for table in self.sessions.values()))},
        )
        self._replicas = replicas
        self.rounds = Rounds(request_states, replicas)
        self.updates = ResourceUpdates()
        self.tasks = TaskRoutes(shared=tasks, servers=self._server_refs)
        self.ready = False

    def _relays_tasks(self, ref: ServerRef) -> bool:
        return relays_tasks(self.pool.learned(ref))

    def service_parts(self) -> ServiceParts:
        return ServiceParts(
            self.registry,
            self.settings,
            self.credentials,
            self.pool,
            self.catalog,
            self.auditor,
            self.rounds,
            self.updates,
            self.tasks,
        )

    @property
    def open_sessions(self) -> int:
        return self.pool.open_sessions

    def _known_tool(self, ref: ServerRef, name: str) -> bool:
        return self.catalog.declared(ref, name)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg = tg

            def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
                tg.start_soon(fn)

            self.credentials.attach(spawn)
            tg.start_soon(self.keepalive.run)
            if self._audit_log is not None:
                tg.start_soon(self._audit_log.run)
            if self._revocations is not None:
                await self._revocations.refresh()  # what was revoked before this start: JWT cut-offs only
                tg.start_soon(self._watch_revocations, self._revocations)
            if self._events is not None:
                tg.start_soon(self._events.run, self._fleet_event, self._fleet_missed, self._events_subscribed.set)
            if self._session_fleet is not None:
                tg.start_soon(self._session_fleet.run, self._session_notice, self._sessions_subscribed.set)
            if self._replicas is not None:
                tg.start_soon(self._replicas.run, self._calls_subscribed.set)
            if self._upstream is not None:
                tg.start_soon(self._upstream.run, self._upstream_heard, self._upstream_subscribed.set)
            self.pool.start(tg)
            self.rounds.start(tg)
            self.catalog.start(tg)
            self.ready = True
            try:
                yield
            finally:
                self.ready = False
                try:
                    await self.pool.aclose()
                finally:
                    if self._audit_log is not None:
                        with anyio.CancelScope(shield=True):
                            await self._audit_log.close()  # what was recorded is written before the writer stops
                    tg.cancel_scope.cancel()

    async def _watch_revocations(self, revocations: RevocationList) -> None:
        """Identities revoked by any process: what this one holds in memory for them goes within a poll, or at once
        when the revoking process says so on the fleet's channel."""
        while True:
            with anyio.move_on_after(self.settings.revocation_poll_seconds):
                await self._revocation_nudge.wait()
            self._revocation_nudge = anyio.Event()  # a nudge from now on is a look after this one
            try:
                subjects = await revocations.refresh()
            except Exception:  # the top of a background task: log, keep watching
                logger.exception("could not read revocations")
                subjects = []
            if subjects:
                self._revoked()
            for subject in subjects:
                kind, _, name = subject.partition(":")
                try:
                    if kind == PrincipalKind.USER.value:
                        await self.credentials.forget_user(name)
                    logger.info("revoked %s: tokens held for it dropped", subject)
                except Exception:  # one subject's failure must not skip the others
                    logger.exception("could not drop what is held for revoked %s", subject)
            done, self._revocation_round = self._revocation_round, anyio.Event()
            done.set()

    async def revocations_applied(self) -> None:
        """Wait until every revocation recorded before this call has been applied here (two watcher rounds: the
        one under way may have looked before the revocation was written)."""
        await self._revocation_round.wait()
        await self._revocation_round.wait()

    def _backend_changed(self, ref: ServerRef) -> None:
        self.catalog.invalidate(ref)
        if self._events is not None and self._tg is not None:
            self._tg.start_soon(self._events.publish, FleetEvent("list_changed", ref.key))

    def _fleet_event(self, event: FleetEvent) -> None:
        """Another replica's news: a revocation (look at once), or a backend whose list changed there."""
        if event.kind == "revoked":
            self._revoked()
            self._revocation_nudge.set()
        elif event.kind == "list_changed" and event.server is not None:
            ref = self._server_refs.get(event.server)
            if ref is not None:  # (a replica on another configuration may name a server this one does not have)
                self.catalog.invalidate(ref)
        elif event.kind == "connected":
            for user, server in self.credentials.connecting_users():
                if server.key == event.server and user_digest(user) == event.who:
                    self.credentials.heard_connected(user, server)

    def _connected_here(self, user: str, server: ServerRef) -> None:
        if self._events is not None and self._tg is not None:
            event = FleetEvent("connected", server.key, user_digest(user))
            self._tg.start_soon(self._events.publish, event)

    def _revoked(self) -> None:
        for forget in self.on_revoked:
            forget()

    def _fleet_missed(self) -> None:
        """The channel was broken for a while: what it carried meanwhile is caught up (revocations from the
        database; every catalog refetched)."""
        self._revoked()
        self._revocation_nudge.set()
        for ref in self._server_refs.values():
            self.catalog.invalidate(ref)

    def _upstream_heard(self, heard: Heard) -> None:
        """Another replica's news of a backend session the fleet holds: a message from its GET stream, or the
        stream let go."""
        if heard.kind == "message" and heard.message is not None:
            self.pool.heard_elsewhere(heard.session, heard.message_id, heard.message, heard.held)
        elif heard.kind == "free":
            self.pool.stream_free(heard.session)

    def _session_notice(self, notice: Notice) -> None:
        for table in self.sessions.values():
            table.notice(notice)

    async def fleet_subscribed(self) -> None:
        """Wait until this replica hears the fleet's channels (tests; at once without Redis)."""
        if self._events is not None:
            await self._events_subscribed.wait()
        if self._session_fleet is not None:
            await self._sessions_subscribed.wait()
        if self._replicas is not None:
            await self._calls_subscribed.wait()
        if self._upstream is not None:
            await self._upstream_subscribed.wait()

    def _catalog_changed(self, ref: ServerRef) -> None:
        """A backend's tools changed: every endpoint that includes it tells its callers (2025-11-25 sessions on their
        GET stream, 2026-07-28 clients on their listen streams)."""
        if self._tg is None:
            return
        for path, endpoint in self.registry.endpoints.items():
            if any(m.source == ref for m in endpoint.members):
                self._tg.start_soon(self.buses[path].publish, ToolsListChanged())

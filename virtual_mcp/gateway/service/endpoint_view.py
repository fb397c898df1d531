"""What one caller sees through one endpoint: the visible tools under their exposed names, and the routing back.

Names come from `naming.namespaced`, which depends only on a tool's own identity, so a tool keeps its name when
other backends come and go. The routing table is rebuilt only when a backend's catalog version changes.

A backend called with each caller's own credential (passthrough, per-user OAuth) may list different tools for each:
its list is the caller's (`scope`, the credential's identity), so the table is per set of scopes; an endpoint of
servers with one configured credential each has one table for every caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from virtual_mcp.errors import GatewayError
from virtual_mcp.naming import SEPARATOR, namespaced
from virtual_mcp.outbound.credentials import Caller, OutboundCredentials
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, Member, Registry
from virtual_mcp.types import Principal, ServerRef
from virtual_mcp.upstream.catalog import ToolCatalog

logger = logging.getLogger(__name__)
# The gateway's own `_meta` keys: set by the gateway only, never taken from a backend (one could otherwise claim to be
# another server).
GATEWAY_META_PREFIX = "virtual-mcp/"
SOURCE_META_KEY = f"{GATEWAY_META_PREFIX}source"
_LISTED_ENTRIES = 256  # distinct subject sets whose filtered tool lists are kept per endpoint
_TABLES = 256  # distinct sets of callers' lists whose routing tables are kept per endpoint

Scopes = tuple[str | None, ...]  # per member of the endpoint: which of its server's lists (None: the shared one)


@dataclass(frozen=True, slots=True)
class Route:
    member: Member
    original: str
    scope: str | None = None  # which list of the server says the tool exists (None: the shared one)


@dataclass(frozen=True, slots=True)
class _Table:
    versions: tuple[int, ...]
    routes: dict[str, Route]
    tools: dict[str, dict[str, Any]]  # exposed name -> exposed tool description


class EndpointView:
    """Tool listing and call routing for one endpoint, shared by every caller of it."""

    def __init__(
        self,
        endpoint: Endpoint,
        registry: Registry,
        catalog: ToolCatalog,
        credentials: OutboundCredentials,
        relays_tasks: Callable[[ServerRef], bool] = lambda ref: False,
    ) -> None:
        self.endpoint = endpoint
        self._relays_tasks = relays_tasks
        self._credentials = credentials
        self._registry = registry
        self._catalog = catalog
        self._budget = registry.naming.budget
        # `tool_overrides` renames, per backend: original -> shown, and back.
        self._shown: dict[ServerRef, dict[str, str]] = {}
        self._originals: dict[ServerRef, dict[str, str]] = {}
        for member in endpoint.members:
            overrides = registry.remotes[member.source].tool_overrides
            renames = {original: o.rename for original, o in overrides.items() if o.rename and o.rename != original}
            self._shown[member.source] = renames
            self._originals[member.source] = {shown: original for original, shown in renames.items()}
        self._tables: dict[Scopes, _Table] = {}
        self._listed: dict[tuple[tuple[int, ...], Scopes, frozenset[str]], list[dict[str, Any]]] = {}
        # Fast path for names that are exactly prefix + "__" + shown name (no shortening), needing no catalog.
        self._prefixes = {
            SEPARATOR.join(m.prefix) + SEPARATOR: (i, m) for i, m in enumerate(endpoint.members) if m.prefix
        }
        self._per_caller = frozenset(m.source for m in endpoint.members if credentials.per_caller(m.source))
        self._shared_scopes: Scopes = (None,) * len(endpoint.members)

    def _scopes(self, caller: Caller | None) -> Scopes:
        """Which list of each member's server `caller` is served (no I/O)."""
        if not self._per_caller or caller is None:
            return self._shared_scopes
        scope = self._credentials.list_scope
        return tuple(scope(m.source, caller) if m.source in self._per_caller else None for m in self.endpoint.members)

    def visible_members(self, principal: Principal) -> list[Member]:
        return [m for m in self.endpoint.members if decide(principal, self._registry.gates[m.gate]).allowed]

    def exposed_name(self, member: Member, tool: str) -> str:
        """The name `member`'s tool `tool` (the backend's own name) is listed and called by here."""
        shown = self._shown[member.source].get(tool, tool)
        return namespaced(member.prefix, shown, self._budget) if member.prefix else shown

    def _original_of(self, member: Member, shown: str) -> str | None:
        """The backend's own name of the tool shown as `shown` (None: a renamed tool's old name, which is no
        longer one of its names)."""
        original = self._originals[member.source].get(shown)
        if original is not None:
            return original
        return None if shown in self._shown[member.source] else shown

    async def list_tools(self, caller: Caller, deadline: float) -> list[dict[str, Any]]:
        """Fan out to every backend the caller may use, concurrently; a backend past `deadline` is left out."""
        return list((await self.listing(caller, deadline))[1])

    async def listing(self, caller: Caller, deadline: float) -> tuple[Hashable, list[dict[str, Any]]]:
        """`list_tools`, and a key that is equal for equal answers (not to be modified: it is shared)."""
        principal = caller.principal
        members = self.visible_members(principal)
        scopes = self._scopes(caller)
        await self._refresh(members, deadline, caller, scopes)
        table = self._current_table(scopes)
        # What one set of subjects may see of one table is computed once (a list of 1,000 tools is 1,000 policy
        # decisions).
        key = (table.versions, scopes, principal.subjects())
        listed = self._listed.get(key)
        if listed is None:
            listed = [tool for name, tool in table.tools.items() if self._allowed(principal, table.routes[name])]
            if len(self._listed) >= _LISTED_ENTRIES:
                self._listed.pop(next(iter(self._listed)))
            self._listed[key] = listed
        return key, listed

    def _allowed(self, principal: Principal, route: Route) -> bool:
        return decide(principal, self._registry.gates[route.member.gate], route.original).allowed

    async def resolve(self, caller: Caller, name: str, deadline: float) -> Route | None:
        """Where a call to `name` goes, or None if it does not exist for this caller (the two are one answer)."""
        scopes = self._scopes(caller)
        route = self._route(name, scopes)
        if route is None:
            # Not in the cache: the backend's list may be unfetched or stale. One refresh, then the answer stands.
            await self._refresh(self.visible_members(caller.principal), deadline, caller, scopes)
            fast = self._fast_route(name, scopes)
            route = self._known(fast) or self._current_table(scopes).routes.get(name)
            if route is None and fast is not None and not self._catalog.known_tools(fast.member.source, fast.scope):
                # The backend could not say what it has (down, hung, garbage): forward, so the caller hears why.
                route = fast
        return route if route is not None and self._allowed(caller.principal, route) else None

    def route_ignoring_policy(self, name: str, caller: Caller | None = None) -> Route | None:
        """Where `name` goes for a caller allowed everything, from the cache only (policy is applied by the caller of
        this; the audit trail uses it to tell a refused tool from one that does not exist)."""
        return self._route(name, self._scopes(caller))

    def _route(self, name: str, scopes: Scopes) -> Route | None:
        return self._known(self._fast_route(name, scopes)) or self._current_table(scopes).routes.get(name)

    def refusal(self, principal: Principal, name: str) -> tuple[Route | None, str]:
        """Why a call to `name` was refused, for the audit trail only (the caller hears one answer for both):
        where it would have gone, if the name says, and whether policy or a missing tool refused it."""
        route = self.route_ignoring_policy(name) or self._fast_route(name, self._shared_scopes)
        if route is not None and not self._allowed(principal, route):
            return route, "not authorized for this tool"
        return route, "unknown tool"

    def _known(self, route: Route | None) -> Route | None:
        """`route` if its backend is known to have that tool, so an unknown name never reaches a backend."""
        if route is None or self._catalog.cached_tool(route.member.source, route.original, route.scope) is None:
            return None
        return route

    def _fast_route(self, name: str, scopes: Scopes) -> Route | None:
        members = self.endpoint.members
        if len(members) == 1 and not members[0].prefix:
            member = members[0]
            original = self._original_of(member, name)
            if original is None or (member.tools is not None and original not in member.tools):
                return None
            return Route(member, original, scopes[0])
        for prefix, (index, member) in self._prefixes.items():
            if name.startswith(prefix):
                original = self._original_of(member, name[len(prefix) :])
                if original is None or (member.tools is not None and original not in member.tools):
                    continue
                if self.exposed_name(member, original) == name:
                    return Route(member, original, scopes[index])
        return None

    async def _refresh(self, members: Iterable[Member], deadline: float, caller: Caller, scopes: Scopes) -> None:
        scope_of = {m.source: scope for m, scope in zip(self.endpoint.members, scopes, strict=True)}
        sources = {m.source for m in members if not self._catalog.fresh(m.source, scope_of[m.source])}
        if not sources:
            return  # every list is in the cache: no credential, no task

        async def fetch(ref: ServerRef) -> None:
            try:
                credential = await self._credentials.credential_for(ref, caller, with_overrides=False)
                await self._catalog.tools(ref, deadline, credential, caller.principal)
            except GatewayError as exc:
                logger.info("tools of %s left out of %s: %s", ref, self.endpoint.path, exc.message)

        async with anyio.create_task_group() as tg:
            for ref in sorted(sources):
                tg.start_soon(fetch, ref)

    def _current_table(self, scopes: Scopes) -> _Table:
        catalog = self._catalog
        versions = tuple(catalog.version(m.source, s) for m, s in zip(self.endpoint.members, scopes, strict=True))
        table = self._tables.get(scopes)
        if table is None or table.versions != versions:
            if table is None and len(self._tables) >= _TABLES:
                self._tables.pop(next(iter(self._tables)))
            table = self._tables[scopes] = self._build(versions, scopes)
        return table

    def _build(self, versions: tuple[int, ...], scopes: Scopes) -> _Table:
        routes: dict[str, Route] = {}
        tools: dict[str, dict[str, Any]] = {}
        for member, scope in zip(self.endpoint.members, scopes, strict=True):
            for tool in self._catalog.known_tools(member.source, scope):
                original = tool["name"]
                if member.tools is not None and original not in member.tools:
                    continue
                exposed = self.exposed_name(member, original)
                if exposed in routes:
                    other = routes[exposed]
                    logger.warning(
                        "%s: tool name %r from %s collides with %s tool %r; keeping the first",
                        self.endpoint.path,
                        exposed,
                        member.source,
                        other.member.source,
                        other.original,
                    )
                    continue
                routes[exposed] = Route(member, original, scope)
                tools[exposed] = self._expose(tool, exposed, member, original)
        return _Table(versions, routes, tools)

    def _expose(self, tool: dict[str, Any], exposed: str, member: Member, original: str) -> dict[str, Any]:
        """The tool as the endpoint lists it: under its exposed name (and configured description), with the
        gateway's `_meta` keys (the source of a namespaced or renamed tool) set by the gateway alone, and with its
        `execution` (task support) only where task-augmented calls to its backend are relayed (service/tasks.py):
        elsewhere no caller is told it may make one (a `task` sent anyway is not passed on: the call runs and
        answers as a plain call)."""
        meta = tool.get("_meta")
        claims = isinstance(meta, dict) and any(key.startswith(GATEWAY_META_PREFIX) for key in meta)
        override = self._registry.remotes[member.source].tool_overrides.get(original)
        named = bool(member.prefix) or exposed != original
        tasks = "execution" not in tool or self._relays_tasks(member.source)
        if not named and not claims and (override is None or override.description is None) and tasks:
            return tool
        out = dict(tool)
        if not tasks:
            out.pop("execution", None)
        if override is not None and override.description is not None:
            out["description"] = override.description
        if isinstance(meta, dict) or named:
            own = without_gateway_keys(meta) if isinstance(meta, dict) else {}
            if named:
                out["name"] = exposed
                own[SOURCE_META_KEY] = {"server": member.source.key, "tool": original}
            if own:
                out["_meta"] = own
            else:
                del out["_meta"]
        return out

    def declares_param_headers(self, name: str, caller: Caller) -> bool:
        """Whether a tool `caller` may use declares `Mcp-Param` headers in its input schema (from the cache)."""
        route = self.route_ignoring_policy(name, caller)
        if route is None or not self._allowed(caller.principal, route):
            return False
        return bool(self._catalog.param_header_map(route.member.source, route.original, route.scope))

    def input_schema(self, name: str, caller: Caller | None) -> dict[str, Any] | None:
        """The input schema of an exposed tool from the cache, for Mcp-Param header validation (no I/O).

        Only for a tool `caller` may use: the SDK validates these headers before dispatch, and a schema-specific
        answer about a forbidden tool would tell it apart from one that does not exist.
        """
        if caller is None:
            return None
        route = self.route_ignoring_policy(name, caller)
        if route is None or not self._allowed(caller.principal, route):
            return None
        tool = self._catalog.cached_tool(route.member.source, route.original, route.scope)
        schema = tool.get("inputSchema") if tool else None
        return schema if isinstance(schema, dict) else None


def without_gateway_keys(meta: dict[str, Any]) -> dict[str, Any]:
    """A backend's `_meta` without the keys only the gateway may set."""
    return {key: value for key, value in meta.items() if not key.startswith(GATEWAY_META_PREFIX)}

"""Cached tool lists of the backends: single-flight fetches, a TTL, list_changed invalidation, negative caching.

A fetch runs in the background task group, so a caller's deadline bounds how long that caller waits, not the
fetch itself: a slow backend's answer still lands in the cache for the next list. A backend that failed is not
asked again for `backend_retry_seconds`, so a dead backend costs at most one deadline, not one per list.

A list is cached per credential. A server whose configured credential is the same for every caller (none, a static
header, client credentials) has one list, fetched with that credential on the server's own session. A server that
is called with each caller's own credential (passthrough, per-user OAuth) may show each caller a different list:
it is cached under that credential's identity (`scope`, never the secret itself), for that credential only, and
at most `max_cached_tool_lists` such lists are kept. Every entry was checked when it arrived (`entries`): a list
holds only valid tools, one per name, within the list's bounds.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import GatewayError, UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import Credential
from virtual_mcp.timing import phase
from virtual_mcp.types import Principal, ServerRef
from virtual_mcp.upstream.capabilities import EVERYTHING
from virtual_mcp.upstream.entries import Problems
from virtual_mcp.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)
_MAX_PAGES = 100
_MAX_DECLARED = 65536  # tool names remembered per server for metric labels (see `declared`)


def scope_of(credential: Credential) -> str | None:
    """Which list a credential is served: None for the server's shared list, else its own (by identity)."""
    return None if credential.shared else credential.key


@dataclass
class _Entry:
    tools: tuple[dict[str, Any], ...] | None = None
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_headers: dict[str, dict[tuple[str, ...], str]] = field(default_factory=dict)
    fetched_at: float = 0.0
    stale: bool = True
    failed_at: float | None = None
    failure: str = ""
    inflight: anyio.Event | None = None
    version: int = 0
    # The server's shared credential (never a caller's own): background refetches use it. None: per-caller only.
    credential: Credential | None = field(default=None, repr=False)


class ToolCatalog:
    def __init__(
        self,
        pool: UpstreamPool,
        settings: GatewaySettings,
        on_change: Callable[[ServerRef], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._lookups = (
            (metrics.cache_lookups.labels("catalog", "hit"), metrics.cache_lookups.labels("catalog", "miss"))
            if metrics is not None
            else None
        )
        self._settings = settings
        self._tg: TaskGroup | None = None
        self._on_change = on_change
        self._clock = clock
        self._entries: dict[ServerRef, _Entry] = {}
        # Lists fetched with one caller's own credential, least recently fetched first.
        self._private: OrderedDict[tuple[ServerRef, str], _Entry] = OrderedDict()
        self._declared: dict[ServerRef, set[str]] = {}
        self._versions = itertools.count(1)  # one sequence for every list: a version names one state of one list

    def start(self, task_group: TaskGroup) -> None:
        """Background refreshes run in `task_group` from now on."""
        self._tg = task_group

    def _entry(self, ref: ServerRef, scope: str | None = None) -> _Entry:
        if scope is None:
            entry = self._entries.get(ref)
            if entry is None:
                entry = self._entries[ref] = _Entry()
            return entry
        key = (ref, scope)
        entry = self._private.get(key)
        if entry is None:
            entry = self._private[key] = _Entry()
            if len(self._private) > self._settings.limits.max_cached_tool_lists:
                self._private.popitem(last=False)
        else:
            self._private.move_to_end(key)
        return entry

    def _peek(self, ref: ServerRef, scope: str | None) -> _Entry | None:
        """The entry if there is one (lookups never create entries: they would push real lists out)."""
        return self._entries.get(ref) if scope is None else self._private.get((ref, scope))

    def fresh(self, ref: ServerRef, scope: str | None = None) -> bool:
        """Whether `tools()` would answer from the cache without asking the backend (no I/O). A lookup: counted as
        a cache hit when it is one."""
        entry = self._peek(ref, scope)
        hit = (
            entry is not None
            and entry.tools is not None
            and not entry.stale
            and self._clock() - entry.fetched_at < self._settings.catalog_ttl_seconds
        )
        if hit and self._lookups is not None:
            self._lookups[0].inc()
        return hit

    def version(self, ref: ServerRef, scope: str | None = None) -> int:
        """The version of the list `scope` is served (0: none yet); a new version for each change of any list."""
        entry = self._peek(ref, scope)
        return entry.version if entry is not None else 0

    def cached_tool(self, ref: ServerRef, name: str, scope: str | None = None) -> dict[str, Any] | None:
        """The backend's own description of `name`, if the list `scope` is served has been fetched (no I/O)."""
        entry = self._peek(ref, scope)
        return entry.by_name.get(name) if entry is not None else None

    def param_header_map(
        self, ref: ServerRef, name: str, scope: str | None = None
    ) -> dict[tuple[str, ...], str] | None:
        """The tool's `x-mcp-header` annotations (argument path -> header token), if it declares any."""
        entry = self._peek(ref, scope)
        return entry.param_headers.get(name) if entry is not None else None

    def known_tools(self, ref: ServerRef, scope: str | None = None) -> tuple[dict[str, Any], ...]:
        """Whatever the cache holds for `ref` (in the list `scope` is served) right now, possibly nothing (no I/O)."""
        entry = self._peek(ref, scope)
        return (entry.tools or ()) if entry is not None else ()

    def declared(self, ref: ServerRef, name: str) -> bool:
        """Whether any list of `ref` ever declared `name` (for metric labels: names a backend gave, not a caller)."""
        return name in self._declared.get(ref, ())

    def invalidate(self, ref: ServerRef) -> None:
        """Called on `notifications/tools/list_changed`: refetch now in the background, if a shared credential
        exists; lists fetched with callers' own credentials are refetched by their next caller."""
        for (source, _), private in self._private.items():
            if source == ref:
                private.stale = True
        entry = self._entry(ref)
        entry.stale = True
        entry.failed_at = None
        if entry.credential is not None:
            self._start_fetch(ref, entry)

    async def tools(
        self, ref: ServerRef, deadline: float, credential: Credential, principal: Principal | None
    ) -> tuple[dict[str, Any], ...]:
        """The backend's tools as `credential` is shown them, waiting at most `deadline` seconds. Raises
        UpstreamError if it cannot say.

        A shared `credential` may be used in the background (on the server's own session) and its failures leave
        the backend out for everyone for a while; a caller's own credential is used only in this call, on
        `principal`'s session, its list is cached for that credential only, and its failure is this caller's.
        """
        now = self._clock()
        scope = scope_of(credential)
        if scope is not None:
            entry = self._entry(ref, scope)
            return await self._tools_for_caller(ref, entry, deadline, credential, principal, now)
        entry = self._entry(ref)
        entry.credential = credential
        fresh = not entry.stale and now - entry.fetched_at < self._settings.catalog_ttl_seconds
        if self._lookups is not None:
            self._lookups[0 if entry.tools is not None and fresh else 1].inc()
        if entry.tools is not None and fresh:
            return entry.tools
        if entry.failed_at is not None and now - entry.failed_at < self._settings.backend_retry_seconds:
            if entry.tools is not None:
                return entry.tools
            raise UpstreamUnavailable(ref.key, f"left out after a recent failure ({entry.failure})")
        event = self._start_fetch(ref, entry)
        if entry.tools is not None:
            # Stale while revalidating: answer from the cache now, the refresh lands for the next caller.
            return entry.tools
        with anyio.move_on_after(deadline), phase("upstream"):
            await event.wait()
        if entry.tools is not None and entry.inflight is None and entry.failed_at is None:
            return entry.tools
        if entry.inflight is not None:
            # Still running: leave this backend out for a while instead of waiting the deadline on every list.
            # The fetch goes on in the background and clears this when it succeeds.
            entry.failed_at = self._clock()
            entry.failure = f"tools/list took longer than {deadline:g}s"
            raise UpstreamTimeout(ref.key, entry.failure)
        raise UpstreamUnavailable(ref.key, entry.failure or "tools/list failed")

    async def _tools_for_caller(
        self,
        ref: ServerRef,
        entry: _Entry,
        deadline: float,
        credential: Credential,
        principal: Principal | None,
        now: float,
    ) -> tuple[dict[str, Any], ...]:
        if entry.tools is not None and not entry.stale and now - entry.fetched_at < self._settings.catalog_ttl_seconds:
            return entry.tools
        try:
            with anyio.fail_after(deadline), phase("upstream"):
                tools = await self._list_all(ref, credential, principal)
        except TimeoutError:
            raise UpstreamTimeout(ref.key, f"tools/list took longer than {deadline:g}s") from None
        self._store(ref, entry, tools)
        return tools

    def _start_fetch(self, ref: ServerRef, entry: _Entry) -> anyio.Event:
        if entry.inflight is None:
            entry.inflight = anyio.Event()
            if self._tg is None:
                raise RuntimeError("the tool catalog is not started")
            self._tg.start_soon(self._fetch, ref, entry)
        return entry.inflight

    async def _fetch(self, ref: ServerRef, entry: _Entry) -> None:
        event = entry.inflight
        assert event is not None
        assert entry.credential is not None
        try:
            tools = await self._list_all(ref, entry.credential, None)
        except GatewayError as exc:
            entry.failed_at = self._clock()
            entry.failure = exc.message
            logger.warning("backend %s left out of tool lists: %s", ref, exc.message)
        except Exception:
            entry.failed_at = self._clock()
            entry.failure = "internal error while listing tools"
            logger.exception("listing tools of %s failed", ref)
        else:
            self._store(ref, entry, tools)
        finally:
            entry.inflight = None
            event.set()

    def _store(self, ref: ServerRef, entry: _Entry, tools: tuple[dict[str, Any], ...]) -> None:
        changed = entry.tools != tools
        # The very first answer of a backend is no change anyone was told about; a recovery or an edit is.
        announce = changed and (entry.tools is not None or bool(entry.failure))
        entry.tools = tools
        entry.by_name = {t["name"]: t for t in tools}
        entry.param_headers = _param_header_maps(tools)
        entry.fetched_at = self._clock()
        entry.stale = False
        entry.failed_at = None
        entry.failure = ""
        if changed:
            entry.version = next(self._versions)
            declared = self._declared.setdefault(ref, set())
            if len(declared) > _MAX_DECLARED:
                declared.clear()
            declared.update(entry.by_name)
        if announce and self._on_change is not None:
            self._on_change(ref)

    async def _list_all(
        self, ref: ServerRef, credential: Credential, principal: Principal | None
    ) -> tuple[dict[str, Any], ...]:
        session = self._pool.session(ref, credential, principal, EVERYTHING)
        checks = self._pool.entries
        budget = checks.budget("tools/list")  # bounds and unique names across pages
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        cursors: set[str] = set()
        # A hung backend must not pin a background task forever.
        timeout = max(self._settings.list_deadline_seconds * 10, 30.0)
        for _ in range(_MAX_PAGES):
            params = {"cursor": cursor} if cursor else None
            result = await session.request("tools/list", params, timeout=timeout)  # each page's entries checked
            problems = Problems(ref, "tools/list")
            tools.extend(budget.admit(result["tools"], problems))
            if problems.count:
                checks.told(problems)
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor or budget.full:
                return tuple(tools)
            if next_cursor in cursors:
                raise UpstreamProtocolError(ref.key, "tools/list pagination goes round in circles (a cursor repeats)")
            cursors.add(next_cursor)
            cursor = next_cursor
        raise UpstreamError(ref.key, f"tools/list did not finish within {_MAX_PAGES} pages")


def _param_header_maps(tools: tuple[dict[str, Any], ...]) -> dict[str, dict[tuple[str, ...], str]]:
    """Precomputed once per fetch: which arguments a 2026-07-28 call must mirror into Mcp-Param-* headers."""
    maps: dict[str, dict[tuple[str, ...], str]] = {}
    for tool in tools:
        schema = tool.get("inputSchema")
        if isinstance(schema, dict) and "x-mcp-header" in str(schema) and find_invalid_x_mcp_header(schema) is None:
            header_map = x_mcp_header_map(schema)
            if header_map:
                maps[tool["name"]] = header_map
    return maps

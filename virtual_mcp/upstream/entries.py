"""The entries of a backend's lists (tools, resources, resource templates, prompts), checked one by one.

One list is served to callers of every protocol era, and the SDK validates a whole list on the way out: one entry
that does not fit the spec (no `inputSchema`, `description: 5`, `_meta: [1]`) would make the whole answer an
internal error for everyone who may see that backend. So each entry is checked against every protocol version's
schema when it arrives; one that fails is left out, with a log line and a metric, and the rest are served. Names are
unique within one backend's list, and a list is bounded in entries and bytes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mcp_types import methods as spec_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from virtual_mcp.errors import UpstreamProtocolError
from virtual_mcp.types import ServerRef

logger = logging.getLogger(__name__)

# method -> (the result's array, the entries' kind as metrics and logs name it, the key that identifies an entry)
LISTS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "tool", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource_template", "uriTemplate"),
    "prompts/list": ("prompts", "prompt", "name"),
}
_VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)
# What a 2026-07-28 list result must carry besides its entries (the gateway sets these itself on the way out).
_MODERN_ENVELOPE = {"ttlMs": 0, "cacheScope": "private", "resultType": "complete"}
_FIELD = re.compile(r"[A-Za-z_]{1,40}")

Report = Callable[[ServerRef, str, int], None]  # (server, kind, how many entries were left out)


@dataclass
class Problems:
    """What was left out of one list answer: counted, and the first reason kept for one log line."""

    ref: ServerRef
    method: str
    count: int = 0
    first: str = ""

    def add(self, index: int, reason: str) -> None:
        if not self.count:
            self.first = f"entry {index}: {reason}"
        self.count += 1


def valid_entries(method: str, entries: list[Any], problems: Problems) -> list[dict[str, Any]]:
    """The entries of one page that every protocol version accepts; the rest are noted in `problems`."""
    key, _, ident = LISTS[method]
    if _page_valid(method, key, ident, entries):
        return entries
    kept = []
    for index, entry in enumerate(entries):
        reason = _invalid(method, key, entry)
        if reason is None:
            kept.append(entry)
        else:
            problems.add(index, reason)
    return kept


def _page_valid(method: str, key: str, ident: str, entries: list[Any]) -> bool:
    """The common case in a few validations: the whole page at once."""
    named = all(isinstance(entry, dict) and isinstance(entry.get(ident), str) and entry[ident] for entry in entries)
    return named and all(_validate(method, version, key, entries) is None for version in _VERSIONS)


def _invalid(method: str, key: str, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"not an object but {type(entry).__name__}"
    ident = LISTS[method][2]
    if not isinstance(entry.get(ident), str) or not entry[ident]:
        return f"{ident}: not a non-empty string"
    for version in _VERSIONS:
        reason = _validate(method, version, key, [entry])
        if reason is not None:
            return reason
    return None


def _validate(method: str, version: str, key: str, entries: list[Any]) -> str | None:
    result: dict[str, Any] = {key: entries}
    if version in MODERN_PROTOCOL_VERSIONS:
        result.update(_MODERN_ENVELOPE)
    try:
        spec_methods.validate_server_result(method, version, result)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        # Only field names and positions: the backend's own keys and values stay out of the log.
        where = ".".join(str(part) for part in error["loc"][2:] if isinstance(part, int) or _FIELD.fullmatch(part))
        return f"{where or 'entry'}: {error['msg']} (protocol {version})"
    except RecursionError:
        return "nested too deep"
    return None


@dataclass
class ListBudget:
    """What one backend list may hold in all, whatever its pagination: one entry per name (the first wins), at most
    `max_entries` entries and `max_bytes` bytes of them."""

    method: str
    max_entries: int
    max_bytes: int
    seen: set[str] = field(default_factory=set)
    size: int = 0
    full: bool = False

    def admit(self, entries: Iterable[dict[str, Any]], problems: Problems) -> list[dict[str, Any]]:
        ident = LISTS[self.method][2]
        kept = []
        for index, entry in enumerate(entries):
            name = entry[ident]
            if name in self.seen:
                problems.add(index, f"a second entry with the same {ident}")
                continue
            size = len(json.dumps(entry, separators=(",", ":")))
            if self.full or len(self.seen) >= self.max_entries or self.size + size > self.max_bytes:
                self.full = True
                problems.add(index, f"past the list's bounds ({self.max_entries} entries, {self.max_bytes} bytes)")
                continue
            self.seen.add(name)
            self.size += size
            kept.append(entry)
        return kept


class EntryChecks:
    """Checks list answers for one gateway: the bounds from its settings, and where left-out entries are told."""

    def __init__(self, max_entries: int, max_bytes: int, report: Report | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._report = report

    def budget(self, method: str) -> ListBudget:
        return ListBudget(method, self.max_entries, self.max_bytes)

    def clean(self, ref: ServerRef, method: str, result: dict[str, Any], budget: ListBudget | None = None) -> None:
        """Leave out of `result` (in place) every entry that is invalid, a duplicate or past the bounds."""
        key, _, _ = LISTS[method]
        entries = result.get(key)
        if not isinstance(entries, list):
            raise UpstreamProtocolError(ref.key, f"{method} result has no {key} array")
        problems = Problems(ref, method)
        kept = (budget or self.budget(method)).admit(valid_entries(method, entries, problems), problems)
        if problems.count:
            result[key] = kept
            self.told(problems)

    def told(self, problems: Problems) -> None:
        """One log line per answer (not per entry: a backend may list thousands) and the metric."""
        kind = LISTS[problems.method][1]
        logger.warning(
            "backend %s: %d %s entr%s left out of %s (%s)",
            problems.ref,
            problems.count,
            kind,
            "y" if problems.count == 1 else "ies",
            problems.method,
            problems.first,
        )
        if self._report is not None:
            self._report(problems.ref, kind, problems.count)

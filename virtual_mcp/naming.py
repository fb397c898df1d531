"""Namespaced tool names that work in every client.

`{group}__{server}__{tool}`, only `[A-Za-z0-9_-]`, at most `budget` characters so a client can add its own prefix
and stay within 64. A name is a pure function of its own parts: adding or removing other backends never changes
it. Characters outside the safe set are replaced and, because replacement can merge distinct names, such names
(and names that are too long) get a short hash of the original so the mapping stays injective in practice.
"""

from __future__ import annotations

import hashlib
import re

SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_LEN = 12  # 48 bits: a backend cannot brute-force a name that shadows another server's tool


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LEN]


def namespaced(prefix: tuple[str, ...], tool: str, budget: int) -> str:
    """The exposed name of `tool` under `prefix` (e.g. ("backend-group", "sentry")). Deterministic."""
    original = SEPARATOR.join((*prefix, tool))
    safe_tool = _UNSAFE.sub("_", tool) or "_"
    name = SEPARATOR.join((*prefix, safe_tool))
    if safe_tool == tool and len(name) <= budget:
        return name
    suffix = "_" + _digest(original)
    if len(name) + len(suffix) <= budget:
        return name + suffix
    return name[: budget - len(suffix)].rstrip("_") + suffix


def shortened(prefix: tuple[str, ...], tool: str, budget: int) -> bool:
    """Whether `tool` under `prefix` gets a hashed name rather than plain `prefix__tool`."""
    return namespaced(prefix, tool, budget) != SEPARATOR.join((*prefix, tool))

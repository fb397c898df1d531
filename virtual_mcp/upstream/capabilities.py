"""The client capabilities a caller declared that the gateway relays to a backend: elicitation (form, URL), sampling
(with tools, with context) and roots. The gateway declares to a backend exactly these of its caller's, normalised
(a 2025-11-25 `elicitation: {}` means form mode), and nothing else: what a backend may ask of its client is what
the caller can answer.

A 2026-07-28 backend reads them from each request's `_meta`; a 2025-11-25 backend from its session's `initialize`,
so a backend session is opened per set of them (at most 2 x 4 x 2 sets, whatever a client sends).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

Capabilities = Mapping[str, Any]
NONE: Capabilities = MappingProxyType({})


# What the gateway's own sessions declare (the tool catalog's): every capability it can relay, so that a backend that
# offers some tools only to clients able to answer its questions lists them. A caller without the capability gets
# the backend's own answer when it calls one.
EVERYTHING: Capabilities = MappingProxyType(
    {"elicitation": {"form": {}, "url": {}}, "sampling": {"tools": {}, "context": {}}, "roots": {}}
)


def _flags(value: object, known: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    return {name: {} for name in known if isinstance(value.get(name), Mapping)}


def relayable(declared: object) -> dict[str, Any]:
    """The relayed part of a client's declared `capabilities`, normalised; {} for anything that is not a mapping."""
    if not isinstance(declared, Mapping):
        return {}
    out: dict[str, Any] = {}
    elicitation = _flags(declared.get("elicitation"), ("form", "url"))
    if elicitation is not None:
        out["elicitation"] = elicitation or {"form": {}}
    sampling = _flags(declared.get("sampling"), ("tools", "context"))
    if sampling is not None:
        out["sampling"] = sampling
    if isinstance(declared.get("roots"), Mapping):
        out["roots"] = {}  # the gateway does not forward roots/list_changed: listChanged is not declared
    return out


def signature(capabilities: Capabilities) -> str:
    """A short stable key for a normalised set (part of a backend session's key)."""
    return json.dumps(dict(capabilities), sort_keys=True, separators=(",", ":")) if capabilities else ""


def declares(capabilities: Capabilities, path: tuple[str, ...]) -> bool:
    """Whether the normalised set has `path` (e.g. ("elicitation", "url"), ("roots",))."""
    node: Any = capabilities
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True

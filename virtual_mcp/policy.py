"""Access policy: a pure function, deny by default. The same decision serves tools/list and tools/call."""

from __future__ import annotations

from virtual_mcp.types import Decision, Principal

DENY_NO_SUBJECTS = Decision(False, "no authorized_subjects configured")
DENY_NOT_AUTHORIZED = Decision(False, "principal matches none of authorized_subjects")


def decide(principal: Principal, authorized_subjects: frozenset[str], tool: str | None = None) -> Decision:
    """May `principal` use `tool` (or, with None, the server at all) on a server gated by `authorized_subjects`?

    Per-tool restriction is expressed with virtual servers (a curated subset under its own subjects); this
    function is where per-tool rules will plug in, so every caller already passes the tool.
    """
    if not authorized_subjects:
        return DENY_NO_SUBJECTS
    matched = principal.subjects() & authorized_subjects
    if not matched:
        return DENY_NOT_AUTHORIZED
    return Decision(True, f"matched {min(matched)}")

"""What the MCP service knows about the request it serves, whichever wire brought it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from virtual_mcp.gateway.service.asks import Asker
from virtual_mcp.gateway.service.resource_updates import Subscriber
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.upstream.capabilities import NONE, Capabilities

RequestId = int | str


class Sink(Protocol):
    """Where the service sends notifications that belong to the request (progress, log messages): the request's own
    event stream."""

    async def notify(self, method: str, params: Mapping[str, Any]) -> None: ...


class SessionState(Protocol):
    """What a 2025-11-25 session remembers between requests that the service reads or sets."""

    log_level: str | None  # the session's logging/setLevel choice (None: every level)

    async def set_log_level(self, level: str) -> None: ...


@dataclass(slots=True, eq=False)
class RequestContext:
    caller: Caller
    version: str  # the protocol version the caller speaks: a session's negotiated one, or the request's own
    request_id: RequestId  # the JSON-RPC id
    trace_id: str  # the gateway's id for the HTTP request (x-request-id, logs, audit)
    sink: Sink
    session: SessionState | None = None  # None: a 2026-07-28 request (no session)
    # The client capabilities the caller declared that the gateway relays (upstream/capabilities.py): a session's
    # from its initialize, a 2026-07-28 request's from its own `_meta`.
    declared: Capabilities = field(default_factory=lambda: NONE)
    asker: Asker | None = None  # how to ask the caller now, on its open stream (a 2025-11-25 session's call)
    subscriber: Subscriber | None = None  # where resource updates for it go (a 2025-11-25 session)
    outside: Asker | None = None  # how to ask its session outside any call (a 2025-11-25 session's GET stream)

    @property
    def modern(self) -> bool:
        return self.version in MODERN_PROTOCOL_VERSIONS

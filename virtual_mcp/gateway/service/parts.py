"""What the MCP service works with, named one by one (not the whole runtime)."""

from __future__ import annotations

from dataclasses import dataclass

from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.gateway.service.auditing import Auditor
from virtual_mcp.gateway.service.resource_updates import ResourceUpdates
from virtual_mcp.gateway.service.rounds import Rounds
from virtual_mcp.gateway.service.tasks import TaskRoutes
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.registry import Registry
from virtual_mcp.upstream.catalog import ToolCatalog
from virtual_mcp.upstream.pool import UpstreamPool


@dataclass(frozen=True, slots=True)
class ServiceParts:
    registry: Registry  # policy gates
    settings: GatewaySettings  # deadlines and timeouts
    credentials: OutboundCredentials  # how the gateway authenticates to each backend, for each caller
    pool: UpstreamPool  # backend sessions
    catalog: ToolCatalog  # backends' tool lists
    auditor: Auditor  # the audit trail of tool calls
    rounds: Rounds  # 2026-07-28 callers' answers to what backends ask (held calls, sealed request states)
    updates: ResourceUpdates  # who subscribed to which backend resource, and where its updates go
    tasks: TaskRoutes  # where each of the gateway's task ids leads (2025-11-25 task-augmented calls)

"""Loopback-only local mode: every request is the configured developer, with the teams the config gives them.

It exists for one developer on one machine. The gateway refuses to start it on a non-loopback listener and
refuses requests that do not come from a loopback address.
"""

from __future__ import annotations

from virtual_mcp.identity import identity
from virtual_mcp.inbound.origin import is_loopback_host
from virtual_mcp.registry import Registry
from virtual_mcp.types import Principal, PrincipalKind


class LocalIdentity:
    def __init__(self, registry: Registry, user: str) -> None:
        name = identity(user, "local user")  # InvalidIdentity: serve refuses to start, saying why
        self.principal = Principal(name, PrincipalKind.USER, registry.teams_of(name))

    def authenticate(self, client_host: str | None) -> Principal | None:
        if client_host is None or not is_loopback_host(client_host):
            return None
        return self.principal

"""DNS-rebinding protection for every route: the `Host` a request names must be one the gateway answers to, and a
browser `Origin` must be loopback, configured, or the gateway itself (checked only once `Host` is known good).

Both are parsed strictly (`virtual_mcp.fields`): `Host: evil.example@127.0.0.1` is not a loopback Host, it is not a
Host at all."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from virtual_mcp.errors import BadRequest
from virtual_mcp.fields import Authority, parse_authority, parse_origin

_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginPolicy:
    """`allowed_hosts`: names the gateway is reached by besides loopback ones. When it is empty and the listener is
    not loopback-only, any Host is accepted (a gateway behind a load balancer); on a loopback listener, only loopback
    names are, which is what defeats DNS rebinding of a developer's local gateway."""

    def __init__(
        self, allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = (), loopback_only: bool = True
    ):
        parsed = []
        for text in allowed_origins:
            origin = parse_origin(text.rstrip("/"))
            if origin is None:
                raise BadRequest(f"allowed origin {text!r} is not an origin (http(s)://host[:port], nothing more)")
            parsed.append(origin)
        self._origins = frozenset(p.serialized() for p in parsed)
        self._hosts = frozenset(h.lower() for h in allowed_hosts) | {p.authority.host for p in parsed}
        self._loopback_only = loopback_only

    def allows_host(self, host: str | None) -> bool:
        """Whether a well-formed `Host` names this gateway (a malformed one never does)."""
        authority = parse_authority(host) if host else None
        return authority is not None and self.allows_authority(authority)

    def allows_authority(self, authority: Authority) -> bool:
        if is_loopback_host(authority.host) or authority.host in self._hosts:
            return True
        return not self._loopback_only and not self._hosts

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a request with this `Origin` (None: not sent) may reach the gateway under this `Host`."""
        authority = parse_authority(host) if host else None
        if authority is None or not self.allows_authority(authority):
            return False
        if origin is None:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False  # `null`, a path, userinfo, another scheme: never an origin the gateway trusts
        if parsed.serialized() in self._origins or is_loopback_host(parsed.authority.host):
            return True
        # Same-origin: the page was served by the gateway itself under a Host already known to be good. Compared as
        # written (a TLS-terminating proxy in front means the request's own scheme says nothing about the page's).
        return parsed.authority == authority

"""DNS-rebinding protection for every route: the `Host` a request names must be one the gateway answers to, and a
browser `Origin` must be loopback, configured, or the gateway itself (checked only once `Host` is known good)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(authority: str) -> str | None:
    try:
        return urlsplit(f"//{authority}").hostname
    except ValueError:
        return None


class OriginPolicy:
    """`allowed_hosts`: names the gateway is reached by besides loopback ones. When it is empty and the listener is
    not loopback-only, any Host is accepted (a gateway behind a load balancer); on a loopback listener, only loopback
    names are, which is what defeats DNS rebinding of a developer's local gateway."""

    def __init__(
        self, allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = (), loopback_only: bool = True
    ):
        self._origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._hosts = frozenset(h.lower() for h in allowed_hosts) | {
            name for o in self._origins if (name := urlsplit(o).hostname)
        }
        self._loopback_only = loopback_only

    def allows_host(self, host: str | None) -> bool:
        if not host:
            return False
        name = _hostname(host)
        if name is None or any(c in host for c in ' "\\,;\r\n'):
            return False
        if is_loopback_host(name) or name in self._hosts:
            return True
        return not self._loopback_only and not self._hosts

    def allows(self, origin: str | None, host: str | None) -> bool:
        if not self.allows_host(host):
            return False
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self._origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if is_loopback_host(parts.hostname):
            return True
        # Same-origin: the page was served by the gateway itself under a Host already known to be good.
        return host is not None and parts.netloc == host.lower()

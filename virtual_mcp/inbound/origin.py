"""DNS-rebinding protection: a browser page from a foreign origin must not reach the gateway (403)."""

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


class OriginPolicy:
    """Allows no Origin (non-browser clients), loopback origins, the configured list, and same-origin requests."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = frozenset(o.rstrip("/").lower() for o in allowed)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self._allowed:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if is_loopback_host(parts.hostname):
            return True
        # Same-origin: the page was served by the gateway itself under the Host it was reached by.
        return host is not None and parts.netloc == host.lower()

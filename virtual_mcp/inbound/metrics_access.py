"""Who may read `/metrics`: its labels name every configured server and tool, so it is not public.

Without a configured token only loopback clients are served (a Prometheus agent on the same host, or an operator
with a tunnel); with `metrics.bearer_token` in the gateway document, any client presenting that token is, and no
one else (loopback clients included). Behind a reverse proxy on the same host, uvicorn takes the client address
from `X-Forwarded-For` sent by a loopback proxy, so remote clients are seen as remote when the proxy sets it.
"""

from __future__ import annotations

import hmac

from virtual_mcp.errors import Forbidden, GatewayError, Unauthorized
from virtual_mcp.inbound.origin import is_loopback_host

CHALLENGE = 'Bearer realm="metrics"'


class MetricsAccess:
    def __init__(self, token: str | None = None) -> None:
        self._token = token.encode() if token else None

    def refusal(self, client_host: str | None, authorization: str | None) -> GatewayError | None:
        """Why this request may not read the metrics (401 with `CHALLENGE`, or 403), or None."""
        if self._token is None:
            if client_host is not None and is_loopback_host(client_host):
                return None
            return Forbidden(
                "Forbidden: /metrics is served to loopback clients only (set metrics.bearer_token in the gateway "
                "document to serve it to others)"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip(" "):
            return Unauthorized("/metrics needs the metrics bearer token (Authorization: Bearer ...)")
        if not hmac.compare_digest(given.strip(" ").encode("latin-1"), self._token):
            return Unauthorized("/metrics: wrong bearer token")
        return None

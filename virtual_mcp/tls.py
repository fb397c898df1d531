"""The TLS context every outbound HTTPS client of this process verifies with.

Building one loads the whole CA bundle (tens of milliseconds of CPU); an `SSLContext` is made to be shared, so the
process builds it once, when the first client needs it, instead of once per client (the upstream pool, the token
endpoints' client, the fast HTTP/1.1 path, every gateway a process assembles).
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_context() -> ssl.SSLContext:
    """httpx's default verification (its CA bundle, `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), built once."""
    return httpx.create_ssl_context()

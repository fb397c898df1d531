"""No cookie jar for the gateway's outbound HTTP clients.

httpx keeps a cookie jar per client, and the gateway shares one client across every caller, credential and backend:
a cookie one backend sets while serving Alice would be sent with Bob's requests, and to every other backend on the
same host (cookies ignore ports). A backend's state belongs in its MCP session, per principal; the gateway keeps
none of it, so it neither stores a `Set-Cookie` nor sends a `Cookie` of its own.
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from urllib.request import Request


class _NoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


def no_cookie_jar() -> CookieJar:
    """A jar that never stores a cookie: give it to `httpx.AsyncClient(cookies=...)`."""
    return CookieJar(policy=_NoCookies())

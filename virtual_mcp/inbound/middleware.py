"""Authentication as one ASGI layer: every route that needs a caller (`needs_caller`, given by the gateway) is
reached only by one who authenticated, and the others' answer is rendered in one place (`refusal`).

Who the caller is travels in the ASGI scope's state under `STATE_KEY`; routes read it with `authentication(scope)`
and never authenticate themselves."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from virtual_mcp.errors import TooManyRequests, Unauthorized
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.refusal import refusal
from virtual_mcp.timing import phase
from virtual_mcp.types import Authentication

STATE_KEY = "authentication"


class Authenticate:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        metadata: ResourceMetadata,
        needs_caller: Callable[[str], bool],
    ) -> None:
        self._app = app
        self._authenticator = authenticator
        self._metadata = metadata
        self._needs_caller = needs_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._needs_caller(scope["path"]):
            await self._app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"authorization":  # the only copy: the front door refused a request naming it twice
                headers["authorization"] = value.decode("latin-1")
                break
        client = scope.get("client")
        try:
            with phase("auth"):
                auth = await self._authenticator.authenticate(
                    headers, scope.get("query_string", b"").decode("latin-1"), client[0] if client else None
                )
        except (Unauthorized, TooManyRequests) as exc:
            await refusal(exc, self._metadata, scope)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = auth
        await self._app(scope, receive, send)


def authentication(scope: Scope) -> Authentication:
    """Who is calling, as `Authenticate` found. Raises RuntimeError when it did not run for this request: a route
    that needs a caller was wired outside it, which must fail loudly rather than serve an unknown caller."""
    auth = scope.get("state", {}).get(STATE_KEY)
    if not isinstance(auth, Authentication):
        raise RuntimeError(f"no authenticated caller for {scope.get('path')!r}: the route is not behind Authenticate")
    return auth

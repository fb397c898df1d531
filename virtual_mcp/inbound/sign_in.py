"""Who a browser is on the consent page, which carries no Authorization header: the credential typed into its form,
or (loopback local mode) the configured developer without one. Checked by the same authenticator as every route."""

from __future__ import annotations

from virtual_mcp.errors import TooManyRequests, Unauthorized
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.types import Authentication, PrincipalKind


async def sign_in(authenticator: Authenticator, credential: str, query: str, client_host: str | None) -> Authentication:
    """The caller a form's credential proves, exactly as if it came as `Authorization: Bearer`; an empty one is no
    credential. Raises Unauthorized or TooManyRequests like the middleware's check."""
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    return await authenticator.authenticate(headers, query, client_host)


async def implicit_user(authenticator: Authenticator, client_host: str | None) -> str | None:
    """The user this client already is without a credential (loopback local mode), else None."""
    try:
        auth = await authenticator.authenticate({}, "", client_host)
    except (Unauthorized, TooManyRequests):
        return None
    return auth.principal.name if auth.principal.kind is PrincipalKind.USER else None

"""The OAuth consent pages, for a browser: the sign-in page of a consent link, its confirmation, the provider's
callback. The consent protocol itself (tickets, CSRF, browser binding, states) is `virtual_mcp.outbound.consent`."""

from __future__ import annotations

import logging
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from virtual_mcp.config.models import OAuth2AuthData
from virtual_mcp.errors import GatewayError, TooManyRequests, Unauthorized
from virtual_mcp.gateway.http import read_body
from virtual_mcp.gateway.routes.consent_page import (
    MAX_FORM_BYTES,
    SignIn,
    browser_cookie,
    form_values,
    message_page,
    origin_of,
    query_values,
    security_headers,
    set_browser_cookie,
    sign_in_page,
)
from virtual_mcp.gateway.service.auditing import Auditor
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.refusal import challenge
from virtual_mcp.inbound.sign_in import implicit_user, sign_in
from virtual_mcp.outbound.consent import (
    ConsentFor,
    ConsentLinkInvalid,
    NotTheLinksAccount,
    NotTheSigningInBrowser,
    new_browser_value,
)
from virtual_mcp.outbound.credentials import OutboundCredentials
from virtual_mcp.outbound.provider_metadata import ProviderMetadataError
from virtual_mcp.registry import Registry
from virtual_mcp.types import Principal, PrincipalKind, ServerRef

logger = logging.getLogger(__name__)
START = "/oauth/start"
CALLBACK = "/oauth/callback"
_START_QUERY = frozenset({"ticket"})
_FORM = frozenset({"ticket", "csrf", "credential"})
_CALLBACK_QUERY = frozenset({"code", "state", "error", "iss"})
_MAX_CODE = 4096  # authorization codes are opaque; providers' run from ~20 characters to a JWT
_MAX_ISSUER = 2048


def consent_routes(
    registry: Registry,
    credentials: OutboundCredentials,
    authenticator: Authenticator,
    metadata: ResourceMetadata,
    auditor: Auditor,
) -> list[Route]:

    def base(request: Request) -> str:
        return metadata.base(request.url.scheme, request.headers.get("host", "localhost"))

    def secure(request: Request) -> bool:
        return base(request).startswith("https://")

    def client_host(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def sign_in_form(request: Request, ticket: str, pending: ConsentFor, browser: str) -> SignIn:
        remote = registry.remotes[pending.server]
        auth = remote.auth
        provider = str(auth.authorization_url) if isinstance(auth, OAuth2AuthData) and auth.authorization_url else ""
        return SignIn(
            pending.server.key,
            remote.description,
            f"{base(request)}{START}",
            ticket,
            credentials.consent.csrf(ticket, browser),
            await implicit_user(authenticator, client_host(request)),
            origin_of(provider),
        )

    def refused(exc: GatewayError, title: str = "Not connected") -> Response:
        status = exc.http_status if exc.http_status >= 400 else 400
        return message_page(title, exc.message, status)

    async def audit_consent(principal: Principal, endpoint: str, server: ServerRef, refusal: str | None) -> str:
        request_id = secrets.token_hex(8)
        await auditor.consent(request_id, principal, endpoint, server.key, refusal)
        return request_id

    async def start_page(request: Request) -> Response:
        """GET: the sign-in page of a consent link. Changes nothing on the gateway."""
        try:
            ticket = query_values(request.url.query, _START_QUERY).get("ticket", "")
            pending = await credentials.consent.pending(ticket)
        except GatewayError as exc:
            return refused(exc, "Link expired" if isinstance(exc, ConsentLinkInvalid) else "Not connected")
        is_secure = secure(request)
        browser = browser_cookie(request, is_secure) or new_browser_value()
        response = sign_in_page(await sign_in_form(request, ticket, pending, browser))
        set_browser_cookie(response, browser, is_secure)
        return response

    async def start_confirm(request: Request) -> Response:
        """POST: the signed-in user confirms; only the ticket's own user, in the browser the page was shown in, is
        sent on to the provider."""
        body = await read_body(request.scope, request.receive, MAX_FORM_BYTES)
        if not isinstance(body, bytes):
            return message_page("Not connected", f"the form is larger than {MAX_FORM_BYTES} bytes", 413)
        browser = browser_cookie(request, secure(request))
        try:
            form = form_values(request.headers.get("content-type"), body, _FORM)
            ticket = form.get("ticket", "")
            pending = await credentials.consent.check_form(ticket, browser, form.get("csrf", ""))
        except GatewayError as exc:
            return refused(exc)
        assert browser is not None  # check_form refuses a form without this browser's cookie
        credential = form.get("credential", "").strip()
        try:
            auth = await sign_in(authenticator, credential, request.url.query, client_host(request))
        except Unauthorized as exc:
            await credentials.consent.sign_in_failed(ticket)
            page = await sign_in_form(request, ticket, pending, browser)
            return sign_in_page(
                page,
                error=exc.message,
                status=exc.http_status,
                headers={"www-authenticate": challenge(exc, metadata, request.scope)},
            )
        except TooManyRequests as exc:
            return message_page("Not connected", exc.message, exc.http_status, exc.http_headers)
        principal = auth.principal
        try:
            target = await credentials.consent_redirect(ticket, browser, principal, f"{base(request)}{CALLBACK}")
        except NotTheLinksAccount as exc:
            reason = f"consent link of user:{exc.owner} used by {principal.subject}; nothing was connected"
            request_id = await audit_consent(principal, START, pending.server, reason)
            logger.warning("consent refused: %s (request %s)", reason, request_id)
            return message_page("Not connected", exc.message, exc.http_status, {"x-request-id": request_id})
        except ProviderMetadataError as exc:
            logger.warning("consent start refused: %s", exc.message)
            return refused(exc, "Cannot connect")
        except GatewayError as exc:
            return refused(exc)
        form_action = "'self'" + (f" {origin}" if (origin := origin_of(target)) else "")
        return RedirectResponse(target, status_code=303, headers=security_headers(form_action))

    async def callback(request: Request) -> Response:
        try:
            params = query_values(request.url.query, _CALLBACK_QUERY)
        except GatewayError as exc:
            return refused(exc)
        state = params.get("state", "")
        if "error" in params:
            await credentials.consent.abandon(state)
            error = "".join(c if " " <= c <= "~" else "?" for c in params["error"][:64])
            return message_page("Not connected", f"The provider answered {error!r}; nothing was stored.", 400)
        code, issuer = params.get("code", ""), params.get("iss")
        if not code or len(code) > _MAX_CODE or (issuer is not None and len(issuer) > _MAX_ISSUER):
            await credentials.consent.abandon(state)
            return message_page("Not connected", "the provider's answer has no usable authorization code", 400)
        try:
            done = await credentials.finish_consent(state, browser_cookie(request, secure(request)), code, issuer)
        except NotTheSigningInBrowser as exc:
            user = Principal(exc.user, PrincipalKind.USER, registry.teams_of(exc.user))
            reason = "the provider's answer to this user's consent arrived in another browser; nothing was connected"
            request_id = await audit_consent(user, CALLBACK, exc.server, reason)
            logger.warning("consent refused for %s on %s: %s (request %s)", exc.user, exc.server, reason, request_id)
            return message_page("Not connected", exc.message, exc.http_status, {"x-request-id": request_id})
        except GatewayError as exc:
            logger.info("consent callback refused: %s", exc.message)
            return refused(exc)
        user = Principal(done.user, PrincipalKind.USER, registry.teams_of(done.user))
        await audit_consent(user, CALLBACK, done.server, None)
        text = f"Your account for {done.server.key} is connected. Return to your client and retry."
        return message_page("Connected", text)

    return [
        Route(START, start_page, methods=["GET"]),
        Route(START, start_confirm, methods=["POST"]),
        Route(CALLBACK, callback, methods=["GET"]),
    ]

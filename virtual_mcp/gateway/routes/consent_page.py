"""The browser side of a consent: the sign-in page, its form, the browser cookie, and the pages that end a flow.

Every page is served so that it cannot be framed (clickjacking the confirm button), cached, or leak its URL (which
holds a consent ticket, or the provider's code and state) as a Referer, and runs no script.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from virtual_mcp.errors import BadRequest
from virtual_mcp.outbound.consent import SECRET_SHAPE

# The browser value lives in a cookie scoped to the consent pages. Over https it is a `__Host-` cookie (Secure,
# Path=/, no Domain), which a sibling subdomain cannot set or overwrite: otherwise a cookie tossed from there could
# make a victim's browser carry an attacker's value into the callback.
COOKIE = "vmcp_consent"
SECURE_COOKIE = "__Host-vmcp_consent"
COOKIE_SECONDS = 1800  # outlives a ticket plus its flow
MAX_FORM_BYTES = 16 * 1024  # a form holds a ticket, a CSRF token and a credential (an IdP JWT may be a few KB)
MAX_FIELDS = 16
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class SignIn:
    """What the sign-in page shows and posts."""

    server: str
    description: str | None
    action: str
    ticket: str
    csrf: str
    # The user the gateway already knows this browser as (loopback local mode), or None: a credential is asked for.
    implicit_user: str | None
    # The provider's origin: the form's answer redirects there, which `form-action` must allow.
    provider_origin: str | None


def browser_cookie(request: Request, secure: bool) -> str | None:
    """This browser's consent value, if it presents a well-formed one."""
    value = request.cookies.get(SECURE_COOKIE if secure else COOKIE)
    return value if value is not None and SECRET_SHAPE.fullmatch(value) else None


def set_browser_cookie(response: Response, value: str, secure: bool) -> None:
    # SameSite=Lax, not Strict: the provider's redirect to the callback is a cross-site top-level navigation, and
    # must carry the cookie; a cross-site POST (CSRF) does not.
    if secure:
        response.set_cookie(
            SECURE_COOKIE, value, max_age=COOKIE_SECONDS, path="/", secure=True, httponly=True, samesite="lax"
        )
    else:
        response.set_cookie(COOKIE, value, max_age=COOKIE_SECONDS, path="/oauth", httponly=True, samesite="lax")


def single_values(pairs: list[tuple[str, str]], names: frozenset[str]) -> dict[str, str]:
    """The named parameters, each at most once (a repeated one is refused: two parsers could read different
    copies); other names are ignored."""
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in names:
            if name in found:
                raise BadRequest(f"the parameter {name!r} appears more than once")
            found[name] = value
    return found


def query_values(query: str, names: frozenset[str]) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except ValueError:  # too many fields, or percent-encoded bytes that are not UTF-8
        raise BadRequest("malformed query string") from None
    return single_values(pairs, names)


def form_values(content_type: str | None, body: bytes, names: frozenset[str]) -> dict[str, str]:
    if (content_type or "").split(";", 1)[0].strip().lower() != FORM_TYPE:
        raise UnsupportedForm()
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except ValueError:
        raise BadRequest("malformed form") from None
    return single_values(pairs, names)


class UnsupportedForm(BadRequest):
    http_status = 415

    def __init__(self) -> None:
        super().__init__(f"the consent form is posted as {FORM_TYPE}")


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def security_headers(form_action: str = "'none'") -> dict[str, str]:
    return {
        "cache-control": "no-store",
        "pragma": "no-cache",
        "x-frame-options": "DENY",
        "content-security-policy": (
            f"default-src 'none'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
        ),
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
    }


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{body}</html>"
    )


def message_page(title: str, text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    body = _document(title, f"<p>{html.escape(text)}</p>")
    return HTMLResponse(body, status_code=status, headers={**security_headers(), **(headers or {})})


def sign_in_page(
    page: SignIn, *, error: str | None = None, status: int = 200, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    server = html.escape(page.server)
    parts = [f"<p>A client asked to connect your account for <b>{server}</b> to this gateway.</p>"]
    if page.description:
        parts.append(f"<p>{html.escape(page.description)}</p>")
    if error is not None:
        parts.append(f'<p role="alert"><b>Not signed in:</b> {html.escape(error)}</p>')
    parts.append(
        "<p>Sign in to the gateway to show that this link is yours: only the gateway account that asked for it can "
        "connect through it, and the account you sign in with is the one that will be connected.</p>"
    )
    fields = [
        f'<input type="hidden" name="ticket" value="{html.escape(page.ticket)}">',
        f'<input type="hidden" name="csrf" value="{html.escape(page.csrf)}">',
    ]
    if page.implicit_user is None:
        fields.append(
            "<p><label>Your gateway token or identity-provider token (the one your MCP client uses)<br>"
            '<input type="password" name="credential" autocomplete="off" required size="60"></label></p>'
        )
        button = f"Sign in and connect {server}"
    else:
        fields.append(f"<p>You are signed in as <b>{html.escape(page.implicit_user)}</b> (local mode).</p>")
        button = f"Connect {server}"
    parts.append(
        f'<form method="post" action="{html.escape(page.action)}">{"".join(fields)}'
        f'<button type="submit">{button}</button></form>'
    )
    form_action = "'self'" + (f" {page.provider_origin}" if page.provider_origin else "")
    return HTMLResponse(
        _document(f"Connect {page.server}", "".join(parts)),
        status_code=status,
        headers={**security_headers(form_action), **(headers or {})},
    )

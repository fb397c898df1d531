"""The consent pages' cookie and form handling on their own (the pages end to end: tests/hostile/test_consent.py)."""

from __future__ import annotations

import pytest
from starlette.responses import Response

from virtual_mcp.errors import BadRequest
from virtual_mcp.gateway.routes.consent_page import (
    COOKIE,
    SECURE_COOKIE,
    UnsupportedForm,
    form_values,
    origin_of,
    set_browser_cookie,
)

FORM = "application/x-www-form-urlencoded"
NAMES = frozenset({"ticket", "csrf", "credential"})


def test_over_https_the_cookie_is_a_host_cookie_no_sibling_subdomain_can_set() -> None:
    response = Response()
    set_browser_cookie(response, "v" * 43, secure=True)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SECURE_COOKIE}={'v' * 43};")
    for attribute in ("HttpOnly", "Max-Age=1800", "Path=/", "SameSite=lax", "Secure"):
        assert f"; {attribute}" in cookie, cookie
    assert "Domain" not in cookie


def test_over_http_it_is_scoped_to_the_consent_pages() -> None:
    response = Response()
    set_browser_cookie(response, "v" * 43, secure=False)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "; Path=/oauth" in cookie and "Secure" not in cookie


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        (None, b"ticket=a", UnsupportedForm),
        ("text/plain", b"ticket=a", UnsupportedForm),
        ("application/x-www-form-urlencodedx", b"ticket=a", UnsupportedForm),
        (FORM, b"ticket=a&ticket=b", BadRequest),
        (FORM, b"csrf=a&csrf=a", BadRequest),
        (FORM, "ticket=é".encode(), BadRequest),
        (FORM, b"ticket=%C3%28", BadRequest),  # percent-encoded, not UTF-8
        (FORM, b"&".join(b"f%d=1" % i for i in range(17)), BadRequest),
    ],
)
def test_malformed_forms_are_refused(content_type: str | None, body: bytes, problem: type[BadRequest]) -> None:
    with pytest.raises(problem):
        form_values(content_type, body, NAMES)


def test_a_form_keeps_blank_values_and_ignores_other_fields() -> None:
    parsed = form_values(f"{FORM}; charset=UTF-8", b"ticket=t&csrf=&extra=1&extra=2&credential=a%2Bb", NAMES)
    assert parsed == {"ticket": "t", "csrf": "", "credential": "a+b"}


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://github.com/login/oauth/authorize?x=1", "https://github.com"),
        ("http://127.0.0.1:9/auth", "http://127.0.0.1:9"),
        ("javascript:alert(1)", None),
        ("", None),
    ],
)
def test_the_form_may_only_lead_to_the_providers_origin(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin

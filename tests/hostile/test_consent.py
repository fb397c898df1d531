"""Hostile input on the consent pages (/oauth/start, /oauth/callback) and the connections API: bad, expired, reused
and foreign tickets, CSRF tokens missing, wrong or replayed, cookies tampered with, states replayed or answered in
another browser, provider errors, oversized, garbled and repeated parameters, wrong methods.

Each case gets its precise status and message; nothing reaches the provider that should not, nothing is stored
under anyone's account, and afterwards Alice still connects her own account (through the same link when the case
must not have spent it). One authorization server and one gateway serve the whole module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import jwt
import pytest

from tests.lab_config import ALICE, MALLORY
from tests.oauth.browser import Browser, Form, connect, consent_form
from tests.oauth.test_authorization_code import Setup, setup
from tests.sensitive import mark
from virtual_mcp.gateway.routes.consent_page import COOKIE
from virtual_mcp.outbound.consent import TICKET_SECONDS, ConsentFlows
from virtual_mcp.types import PrincipalKind, ServerRef

GITHUB = ServerRef("g", "github")
A_SECRET = "A" * 43  # well formed (the shape of a ticket, a state, a CSRF token, a browser value), never issued


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Lab:
    s: Setup
    alice: str
    mallory: str
    ci: str
    clock: Clock


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with setup(tmp_path_factory.mktemp("consent")) as s:
        alice = await s.gw.token(PrincipalKind.USER, ALICE)
        mallory = await s.gw.token(PrincipalKind.USER, MALLORY)
        ci = await s.gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
        yield Lab(s, alice, mallory, ci, Clock())


@dataclass
class Case:
    """Alice's fresh consent link, opened in her browser: the page and its form."""

    lab: Lab
    link: str
    ticket: str
    browser: Browser
    page: httpx2.Response
    form: Form

    @property
    def s(self) -> Setup:
        return self.lab.s

    @property
    def url(self) -> str:
        return self.lab.s.gw.url

    async def post(
        self, data: dict[str, str] | str | bytes, browser: Browser | None = None, **headers: str
    ) -> httpx2.Response:
        http = (browser or self.browser).http
        if isinstance(data, dict):
            return await http.post(self.form.action, data=data, headers=headers)
        headers.setdefault("content-type", "application/x-www-form-urlencoded")
        return await http.post(self.form.action, content=data, headers=headers)

    def fields(self, **changes: str | None) -> dict[str, str]:
        data = {**self.form.fields, "credential": self.lab.alice}
        for name, value in changes.items():
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value
        return data

    async def answer(self) -> str:
        """Alice signs in and goes through the provider; the provider's redirect back (code, state), unfollowed."""
        back = await self.browser.submit(self.page, self.lab.alice, stop_at=f"{self.url}/oauth/callback")
        location = back.headers["location"]
        assert location.startswith(f"{self.url}/oauth/callback?")
        for name, value in parse_qsl(urlsplit(location).query):
            if name in ("code", "state"):
                mark(value)
        return location

    async def to_provider(self) -> str:
        """Alice signs in; the gateway's redirect to the provider, unfollowed."""
        sent = await self.browser.submit(self.page, self.lab.alice, stop_at=self.s.auth.authorization_endpoint)
        assert sent.status_code == 303
        return str(sent.headers["location"])


@pytest.fixture
async def case(lab: Lab) -> AsyncIterator[Case]:
    """A clean slate: new consent tables on the module's clock, nobody connected, the provider's counters at zero."""
    s = lab.s
    s.gw.runtime.credentials.consent = ConsentFlows(lab.clock)
    for user in (ALICE, MALLORY):
        await s.gw.runtime.credentials.disconnect(user, GITHUB)
    await s.auth.reset()
    link = await s.consent_link(lab.alice)
    ticket = link.split("ticket=", 1)[1]
    mark(ticket)
    async with Browser() as browser:
        page = await browser.open(link)
        assert page.status_code == 200, page.text
        yield Case(lab, link, ticket, browser, page, consent_form(page.text, str(page.url)))


def provider_subject(s: Setup, answer: dict[str, Any]) -> str:
    access = str(answer["authorization"]).removeprefix("Bearer ")
    mark(access)
    key = jwt.PyJWKClient(s.auth.jwks_uri).get_signing_key_from_jwt(access).key
    return str(jwt.decode(access, key, algorithms=["RS256"], audience=f"{s.backend.url}/mcp")["sub"])


async def alice_still_connects(c: Case, *, same_link: bool) -> None:
    """The gateway keeps serving: Alice connects her own account (through the very link the case used, when the
    case must not have spent it) and her call reaches the backend with her own provider token; the trail has it."""
    link = await c.s.consent_link(c.lab.alice)
    assert (link == c.link) is same_link
    if same_link:
        done = await c.browser.submit(await c.browser.open(link), c.lab.alice)
    else:
        done = await connect(link, c.lab.alice)
    assert done.status_code == 200 and "Connected" in done.text, done.text
    assert provider_subject(c.s, await c.s.call(c.lab.alice)) == ALICE
    [connected, *_] = await c.s.gw.audit(user=ALICE, method="oauth/consent", outcome="allowed")
    assert (connected.endpoint, connected.server) == ("/oauth/callback", "g/github")
    assert c.s.gw.leaks() == []


def page_says(response: httpx2.Response, status: int, text: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert text in response.text, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


Attack = Callable[[Case], Awaitable[httpx2.Response]]
LINK_GONE = "this consent link is unknown, already used or expired"
FORM_REFUSED = "this form was not opened in this browser or has expired"
STATE_GONE = "unknown, used or expired authorization state"
OTHER_BROWSER = "this authorization was not started in this browser"


async def get_start(c: Case, query: str) -> httpx2.Response:
    return await c.browser.http.get(f"{c.url}/oauth/start{query}")


async def expired_ticket(c: Case) -> httpx2.Response:
    c.lab.clock.now += TICKET_SECONDS + 1
    return await get_start(c, f"?ticket={c.ticket}")


async def used_ticket(c: Case) -> httpx2.Response:
    assert "Connected" in (await c.browser.submit(c.page, c.lab.alice)).text
    await c.s.gw.runtime.credentials.disconnect(ALICE, GITHUB)
    return await get_start(c, f"?ticket={c.ticket}")


async def mallorys_browser(c: Case, cookie: str | None) -> httpx2.Response:
    async with Browser() as other:
        if cookie is not None:
            other.http.cookies.set(COOKIE, cookie, path="/oauth")
        return await c.post(c.fields(), browser=other)


async def tampered_cookie(c: Case, value: str) -> httpx2.Response:
    c.browser.http.cookies.clear()
    c.browser.http.cookies.set(COOKIE, value, path="/oauth")
    return await c.post(c.fields())


async def csrf_of_mallorys_page(c: Case) -> httpx2.Response:
    """Mallory's own page (his ticket, his browser) gives a valid CSRF token, which is worth nothing on Alice's."""
    async with Browser() as other:
        page = await other.open(await c.s.consent_link(c.lab.mallory))
        theirs = consent_form(page.text, str(page.url)).fields["csrf"]
    return await c.post(c.fields(csrf=theirs))


async def replayed_form(c: Case) -> httpx2.Response:
    assert (await c.post(c.fields())).status_code == 303
    return await c.post(c.fields())


async def too_many_failures(c: Case) -> httpx2.Response:
    for _ in range(4):
        assert (await c.post(c.fields(credential="vmcp_nope_nope"))).status_code == 401
    last = await c.post(c.fields(credential="vmcp_nope_nope"))
    assert last.status_code == 401
    return await c.post(c.fields())


async def revoked_token(c: Case) -> httpx2.Response:
    info, token = await c.s.gw.tokens.create(PrincipalKind.USER, ALICE)
    mark(token)
    assert await c.s.gw.tokens.revoke(info.id)
    return await c.post(c.fields(credential=token))


async def callback(c: Case, query: str, browser: Browser | None = None) -> httpx2.Response:
    return await (browser or c.browser).http.get(f"{c.url}/oauth/callback{query}")


async def answer_with(c: Case, **changes: str) -> httpx2.Response:
    """The provider's genuine answer to Alice's flow, in her own browser, with `changes` made to its parameters."""
    parts = urlsplit(await c.answer())
    params = {**dict(parse_qsl(parts.query)), **changes}
    return await c.browser.http.get(f"{c.url}{parts.path}?{urlencode(params)}")


async def answered_in(c: Case, cookie: str | None) -> httpx2.Response:
    answer = await c.answer()
    async with Browser() as other:
        if cookie is not None:
            other.http.cookies.set(COOKIE, cookie, path="/oauth")
        return await other.http.get(answer)


async def state_replayed(c: Case) -> httpx2.Response:
    answer = await c.answer()
    assert "Connected" in (await c.browser.http.get(answer)).text
    await c.s.gw.runtime.credentials.disconnect(ALICE, GITHUB)
    return await c.browser.http.get(answer)


async def error_then_code(c: Case) -> httpx2.Response:
    """The provider said no (or someone said so in its name): the flow is over, and a code arriving later for the
    same state is refused."""
    sent = await c.to_provider()
    state = dict(parse_qsl(urlsplit(sent).query))["state"]
    mark(state)
    refused = await callback(c, "?" + urlencode({"error": "access_denied", "state": state}))
    page_says(refused, 400, "The provider answered &#x27;access_denied&#x27;; nothing was stored.")
    return await c.browser.open(sent)


async def expired_state(c: Case) -> httpx2.Response:
    answer = await c.answer()
    c.lab.clock.now += TICKET_SECONDS + 1
    return await c.browser.http.get(answer)


# (id, attack, status, what the page says, Alice's link survives the attack)
CASES: list[tuple[str, Attack, int, str, bool]] = [
    # The link: GET /oauth/start.
    ("no ticket", lambda c: get_start(c, ""), 400, LINK_GONE, True),
    ("empty ticket", lambda c: get_start(c, "?ticket="), 400, LINK_GONE, True),
    ("garbled ticket", lambda c: get_start(c, "?ticket=../../etc/passwd%00"), 400, LINK_GONE, True),
    ("oversized ticket", lambda c: get_start(c, "?ticket=" + "A" * 6000), 400, LINK_GONE, True),
    ("unknown ticket", lambda c: get_start(c, f"?ticket={A_SECRET}"), 400, LINK_GONE, True),
    ("ticket twice", lambda c: get_start(c, f"?ticket={c.ticket}&ticket={A_SECRET}"), 400, "more than once", True),
    ("same ticket twice", lambda c: get_start(c, f"?ticket={c.ticket}&ticket={c.ticket}"), 400, "more than once", True),
    ("not UTF-8", lambda c: get_start(c, f"?ticket={c.ticket}&x=%ff"), 400, "malformed query string", True),
    ("too many params", lambda c: get_start(c, "?" + "&".join(f"p{i}=1" for i in range(40))), 400, "malformed", True),
    ("expired ticket", expired_ticket, 400, LINK_GONE, False),
    ("used ticket", used_ticket, 400, LINK_GONE, False),
    # The form: POST /oauth/start.
    ("CSRF missing", lambda c: c.post(c.fields(csrf=None)), 403, FORM_REFUSED, True),
    ("CSRF empty", lambda c: c.post(c.fields(csrf="")), 403, FORM_REFUSED, True),
    ("CSRF wrong", lambda c: c.post(c.fields(csrf=A_SECRET)), 403, FORM_REFUSED, True),
    ("CSRF garbled", lambda c: c.post(c.fields(csrf="<script>" * 50)), 403, FORM_REFUSED, True),
    ("CSRF of another ticket", csrf_of_mallorys_page, 403, FORM_REFUSED, True),
    ("form in a browser without cookie", lambda c: mallorys_browser(c, None), 403, FORM_REFUSED, True),
    ("form in another browser", lambda c: mallorys_browser(c, A_SECRET), 403, FORM_REFUSED, True),
    ("cookie garbled", lambda c: tampered_cookie(c, "x" * 4000), 403, FORM_REFUSED, True),
    ("cookie swapped", lambda c: tampered_cookie(c, A_SECRET), 403, FORM_REFUSED, True),
    ("form replayed", replayed_form, 400, LINK_GONE, False),
    ("ticket missing", lambda c: c.post(c.fields(ticket=None)), 400, LINK_GONE, True),
    ("ticket unknown", lambda c: c.post(c.fields(ticket=A_SECRET)), 400, LINK_GONE, True),
    (
        "field twice",
        lambda c: c.post(urlencode([*c.fields().items(), ("csrf", A_SECRET)])),
        400,
        "more than once",
        True,
    ),
    ("JSON body", lambda c: c.post(b"{}", **{"content-type": "application/json"}), 415, "is posted as", True),
    (
        "multipart body",
        lambda c: c.post(b"--x--", **{"content-type": "multipart/form-data; boundary=x"}),
        415,
        "",
        True,
    ),
    ("oversized body", lambda c: c.post(urlencode(c.fields(pad="x" * 20_000))), 413, "larger than 16384", True),
    ("not ASCII", lambda c: c.post(urlencode(c.fields()).encode() + b"&x=\xff"), 400, "malformed form", True),
    ("no credential", lambda c: c.post(c.fields(credential=None)), 401, "missing bearer token", True),
    ("unknown token", lambda c: c.post(c.fields(credential="vmcp_abc_def")), 401, "unknown, revoked or expired", True),
    ("garbage JWT", lambda c: c.post(c.fields(credential="eyJ.eyJ.sig")), 401, "invalid token", True),
    ("revoked token", revoked_token, 401, "unknown, revoked or expired", True),
    (
        "credential in query",
        lambda c: c.browser.http.post(f"{c.form.action}?access_token=x", data=c.fields()),
        400,
        "never accepted",
        True,
    ),
    ("five failed sign-ins", too_many_failures, 400, LINK_GONE, False),
    (
        "another user signs in",
        lambda c: c.post(c.fields(credential=c.lab.mallory)),
        403,
        "another gateway account",
        False,
    ),
    (
        "a virtual account signs in",
        lambda c: c.post(c.fields(credential=c.lab.ci)),
        403,
        "another gateway account",
        False,
    ),
    ("foreign Origin", lambda c: c.post(c.fields(), origin="https://evil.example"), 403, "foreign Origin", True),
    ("PUT", lambda c: c.browser.http.put(c.form.action, data=c.fields()), 405, "Method Not Allowed", True),
    # The provider's answer: GET /oauth/callback.
    ("callback empty", lambda c: callback(c, ""), 400, "no usable authorization code", True),
    ("state unknown", lambda c: callback(c, f"?code=x&state={A_SECRET}"), 400, STATE_GONE, True),
    ("state garbled", lambda c: callback(c, "?code=x&state=%3Cscript%3E"), 400, STATE_GONE, True),
    ("state twice", lambda c: callback(c, f"?code=x&state={A_SECRET}&state={A_SECRET}"), 400, "more than once", True),
    ("code twice", lambda c: callback(c, f"?code=x&code=y&state={A_SECRET}"), 400, "more than once", True),
    (
        "error with markup",
        lambda c: callback(c, "?error=%3Cscript%3Ealert(1)%3C/script%3E%0d%0a"),
        400,
        "&lt;script&gt;",
        True,
    ),
    ("error then code", error_then_code, 400, STATE_GONE, False),
    ("code oversized", lambda c: answer_with(c, code="c" * 5000), 400, "no usable authorization code", False),
    ("answer without cookie", lambda c: answered_in(c, None), 403, OTHER_BROWSER, False),
    ("answer in another browser", lambda c: answered_in(c, A_SECRET), 403, OTHER_BROWSER, False),
    ("answer replayed", state_replayed, 400, STATE_GONE, False),
    ("answer expired", expired_state, 400, STATE_GONE, False),
    (
        "issuer mixed up",
        lambda c: answer_with(c, iss="https://evil.example"),
        400,
        "another authorization server",
        False,
    ),
    (
        "code forged",
        lambda c: answer_with(c, code="forged"),
        502,
        "no longer accepts this grant (invalid_grant)",
        False,
    ),
    (
        "POST callback",
        lambda c: c.browser.http.post(f"{c.url}/oauth/callback", data={"code": "x"}),
        405,
        "Method Not Allowed",
        True,
    ),
]


@pytest.mark.parametrize(
    ("attack", "status", "says", "survives"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
async def test_hostile_consent_input(case: Case, attack: Attack, status: int, says: str, survives: bool) -> None:
    response = await attack(case)
    assert response.status_code == status, (response.status_code, response.text)
    assert says in response.text, response.text
    if response.headers.get("content-type", "").startswith("text/html"):
        page_says(response, status, says)
    if status == 401:
        assert "www-authenticate" in response.headers
    if "www-authenticate" in response.headers:  # the sign-in page again, with the gateway's challenge
        assert response.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{case.url}/.well-known/oauth-protected-resource"'
        )
        assert consent_form(response.text, str(response.url)).inputs == {"credential": "password"}
    else:
        assert case.ticket not in response.text
    assert case.lab.alice not in response.text and case.lab.mallory not in response.text
    assert await case.s.gw.runtime.credentials.connected(MALLORY) == []
    await alice_still_connects(case, same_link=survives)


# The connections API answers 401 like every MCP endpoint: with a challenge naming the gateway's metadata document.
CONNECTIONS: list[tuple[str, str, str, dict[str, str], int, str]] = [
    ("list without token", "GET", "/oauth/connections", {}, 401, ""),
    (
        "list with unknown token",
        "GET",
        "/oauth/connections",
        {"authorization": "Bearer vmcp_x_y"},
        401,
        "invalid_token",
    ),
    ("list with Basic", "GET", "/oauth/connections", {"authorization": "Basic YTpi"}, 401, ""),
    ("list with token in query", "GET", "/oauth/connections?access_token=x", {}, 400, "invalid_request"),
    ("disconnect without token", "DELETE", "/oauth/connections/g/github", {}, 401, ""),
    (
        "disconnect with bad JWT",
        "DELETE",
        "/oauth/connections/g/github",
        {"authorization": "Bearer a.b.c"},
        401,
        "invalid_token",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "error"), [c[1:] for c in CONNECTIONS], ids=[c[0] for c in CONNECTIONS]
)
async def test_the_connections_api_challenges_like_every_endpoint(
    lab: Lab, method: str, path: str, headers: dict[str, str], status: int, error: str
) -> None:
    url = lab.s.gw.url
    async with httpx2.AsyncClient() as http:
        refused = await http.request(method, f"{url}{path}", headers=headers)
        assert refused.status_code == status, refused.text
        challenge = refused.headers["www-authenticate"]
        document = f"{url}/.well-known/oauth-protected-resource"
        assert challenge.startswith(f'Bearer resource_metadata="{document}"'), challenge
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge), challenge
        assert (await http.get(document)).json()["resource"] == url
        listed = await http.get(f"{url}/oauth/connections", headers={"authorization": f"Bearer {lab.alice}"})
        assert listed.status_code == 200 and listed.json()["user"] == ALICE


async def test_the_sign_in_page_cannot_be_framed_cached_or_leak_its_url(case: Case) -> None:
    page = case.page
    provider = case.s.auth.issuer
    assert page.headers["content-security-policy"] == (
        f"default-src 'none'; form-action 'self' {provider}; frame-ancestors 'none'; base-uri 'none'"
    )
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-content-type-options"] == "nosniff"
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "; HttpOnly" in cookie and "; Path=/oauth" in cookie
    assert "; SameSite=lax" in cookie and "Secure" not in cookie  # plain http here; see test_consent_page for https
    assert "<script" not in page.text and "g/github" in page.text
    # No side effects: opened again, the same page (same CSRF token for this browser), nothing sent to the provider.
    again = await case.browser.open(case.link)
    assert consent_form(again.text, str(again.url)).fields == case.form.fields
    assert (await case.s.auth.stats())["authorization"]["total"] == 0
    to_provider = await case.browser.submit(case.page, case.lab.alice, stop_at=case.s.auth.authorization_endpoint)
    assert to_provider.status_code == 303 and to_provider.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in to_provider.headers
    assert "Connected" in (await case.browser.follow(await case.browser.http.get(to_provider.headers["location"]))).text


async def test_a_virtual_account_named_like_a_user_neither_sees_nor_disconnects_their_accounts(case: Case) -> None:
    """Connected accounts are keyed by user name; a virtual account of the same name is another principal."""
    assert "Connected" in (await case.browser.submit(case.page, case.lab.alice)).text
    impostor = await case.s.gw.token(PrincipalKind.VIRTUAL_ACCOUNT, ALICE)
    headers = {"authorization": f"Bearer {impostor}"}
    async with httpx2.AsyncClient() as http:
        listed = await http.get(f"{case.url}/oauth/connections", headers=headers)
        assert listed.status_code == 403 and "only users have connected accounts" in listed.text
        gone = await http.delete(f"{case.url}/oauth/connections/g/github", headers=headers)
        assert gone.status_code == 403 and "only users have connected accounts" in gone.text
        mine = await http.get(f"{case.url}/oauth/connections", headers={"authorization": f"Bearer {case.lab.alice}"})
        assert mine.json() == {"user": ALICE, "connected": ["g/github"]}
    assert provider_subject(case.s, await case.s.call(case.lab.alice)) == ALICE
    # Nor can it sign in on Alice's consent link.
    await case.s.gw.runtime.credentials.disconnect(ALICE, GITHUB)
    async with Browser() as browser:
        refused = await browser.connect(await case.s.consent_link(case.lab.alice), impostor)
    assert refused.status_code == 403 and "another gateway account" in refused.text
    assert await case.s.gw.runtime.credentials.connected(ALICE) == []
    assert "Connected" in (await connect(await case.s.consent_link(case.lab.alice), case.lab.alice)).text

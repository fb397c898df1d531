"""A user's browser for the consent flow: one cookie jar, redirects followed by hand, and the gateway's sign-in form
read from the page and submitted as a browser would (its hidden fields, plus what the user types).

httpx2, not httpx: httpx is the gateway's upstream client, whose (debug) log lines the suite scans for secrets;
a browser's redirects legitimately carry codes and states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from urllib.parse import urljoin

import httpx2

HOPS = 12


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    # Fields the user fills in (no value in the page): name -> input type.
    inputs: dict[str, str] = field(default_factory=dict)


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(named.get("action", ""), named.get("method", "get").lower()))
        elif tag == "input" and self.forms and "name" in named:
            kind = named.get("type", "text")
            if kind == "hidden":
                self.forms[-1].fields[named["name"]] = named.get("value", "")
            else:
                self.forms[-1].inputs[named["name"]] = kind


def consent_form(text: str, url: str) -> Form:
    """The one form of a gateway sign-in page (`text`, shown at `url`)."""
    reader = _FormReader()
    reader.feed(text)
    [form] = reader.forms
    form.action = urljoin(url, form.action)
    return form


class Browser:
    def __init__(self, keepalive: bool = True) -> None:
        """`keepalive=False`: a connection per request (behind a load balancer, each may reach another replica)."""
        limits = httpx2.Limits() if keepalive else httpx2.Limits(max_keepalive_connections=0)
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=10, limits=limits)
        # Every response seen, in order, for tests that look at a hop in the middle (the redirect to the provider).
        self.seen: list[httpx2.Response] = []

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.aclose()

    async def follow(self, response: httpx2.Response, stop_at: str | None = None) -> httpx2.Response:
        """Follow redirects from `response` until a page is shown (or a redirect to a URL starting with
        `stop_at`, which is returned unfollowed)."""
        self.seen.append(response)
        for _ in range(HOPS):
            if not response.is_redirect:
                return response
            url = urljoin(str(response.url), response.headers["location"])
            if stop_at is not None and url.startswith(stop_at):
                return response
            response = await self.http.get(url)
            self.seen.append(response)
        raise AssertionError("too many redirects")

    async def open(self, url: str, stop_at: str | None = None) -> httpx2.Response:
        return await self.follow(await self.http.get(url), stop_at)

    async def submit(
        self,
        page: httpx2.Response,
        credential: str | None,
        stop_at: str | None = None,
        overrides: Mapping[str, str | None] | None = None,
    ) -> httpx2.Response:
        """Submit the sign-in form of `page` with `credential` typed in (None: the page asks for none), the hidden
        fields as the page gave them unless `overrides` changes (a value) or drops (None) them."""
        form = consent_form(page.text, str(page.url))
        assert form.method == "post", form
        data = dict(form.fields)
        if credential is not None:
            assert form.inputs == {"credential": "password"}, form
            data["credential"] = credential
        for name, value in (overrides or {}).items():
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value
        return await self.follow(await self.http.post(form.action, data=data), stop_at)

    async def connect(self, link: str, credential: str | None, stop_at: str | None = None) -> httpx2.Response:
        """Open a consent link, sign in with `credential` and confirm; the page the flow ends on."""
        page = await self.open(link)
        if page.status_code != 200 or "<form" not in page.text:
            return page
        return await self.submit(page, credential, stop_at)


async def connect(link: str, credential: str | None) -> httpx2.Response:
    """The whole consent in a fresh browser, signed in with `credential`."""
    async with Browser() as browser:
        return await browser.connect(link, credential)

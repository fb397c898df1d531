"""Per-user OAuth consent (authorization code + PKCE S256), bound to the gateway user who asked for it and to the
browser in which that user proved who they are.

1. A call needs a user's token that the vault does not hold: `ConsentRequired` carries a start URL with a ticket
   bound to (user, server), valid for a few minutes. One ticket per (user, server) at a time: asking again gives the
   same link (its lifetime renewed), so a link shown earlier still works.
2. The user opens it in a browser: a gateway page (no side effects) names the server and asks the user to sign in
   to the gateway. Its form carries a CSRF token bound to the ticket and to a random value in a cookie of that
   browser (`browser`).
3. The form is posted back: the CSRF token must match this browser's cookie, and the principal the gateway's
   authenticator finds in the form's credential must be the ticket's user. Only then does the ticket become a
   `state` (random, single use) bound to that browser, with a PKCE verifier kept here, and the browser is sent to
   the provider. A link opened by anyone else connects nothing (the ticket is spent, so a leaked link dies).
4. The provider redirects to the gateway's callback: `state` finds the flow, which must be completed in the same
   browser (its cookie); the code is exchanged with the verifier, and the token set is stored for (user, server).

Without steps 2 and 3, Mallory's link opened by Alice (logged in at the provider) stored Alice's provider tokens
under Mallory's gateway account; without the browser binding in step 4, Alice completing at the provider a flow
that Mallory started did the same. Nothing here is ever written to a log: tickets, states, codes, verifiers and
browser values are credentials while they live.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from virtual_mcp.errors import BadRequest, Forbidden, GatewayError
from virtual_mcp.outbound.pending import LocalPending, Pending, Record
from virtual_mcp.types import Principal, PrincipalKind, ServerRef

TICKET_SECONDS = 600.0
# Bounds of what is pending, per user and in total (see PendingTable for who is evicted past them).
TICKETS_PER_USER = 64  # a user has at most one per per-user OAuth server anyway
FLOWS_PER_USER = 8  # authorization requests a user may have open at the provider at once
MAX_PENDING = 10_000
# Failed sign-ins on one consent page before its link is spent (gateway tokens cannot be guessed; this keeps a
# leaked link from serving as an oracle for anything else).
MAX_SIGN_IN_FAILURES = 5
# Tickets, states, CSRF tokens and browser values: 32 random bytes (or an HMAC-SHA256), base64url, no padding.
SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


class ConsentRequired(GatewayError):
    """The caller must connect their account for `server` first; `url` is where."""

    jsonrpc_code = -32042  # URL elicitation required (MCP)
    http_status = 200

    def __init__(self, server: ServerRef, url: str, elicitation_id: str, reason: str) -> None:
        message = f"{reason}: open the link to connect your account for {server.key}, then retry"
        # The MCP way to send a user somewhere: a URL elicitation the client can open for them.
        elicitation = {"mode": "url", "message": message, "url": url, "elicitationId": elicitation_id}
        super().__init__(message, data={"elicitations": [elicitation]})
        self.server = server
        self.url = url
        self.elicitation_id = elicitation_id

    @property
    def told(self) -> str:
        """The link in the text too, for clients that show an error's message and never its data. Only the caller
        is told it: the logs and the audit trail keep `message`, without the link's single-use ticket."""
        return f"{self.message.removesuffix(', then retry')} ({self.url}), then retry"


class ConsentLinkInvalid(BadRequest):
    def __init__(self) -> None:
        super().__init__("this consent link is unknown, already used or expired; retry the call for a new one")


class ConsentStateInvalid(BadRequest):
    def __init__(self) -> None:
        super().__init__("unknown, used or expired authorization state; start again from your client")


class ConsentRefused(Forbidden):
    """The browser or the person completing a consent is not the one it belongs to. Nothing is connected."""


class FormNotFromThisBrowser(ConsentRefused):
    def __init__(self) -> None:
        super().__init__(
            "this form was not opened in this browser or has expired (cookies must be enabled for this page); "
            "open the consent link again"
        )


class NotTheLinksAccount(ConsentRefused):
    """Signed in as someone other than the ticket's user. `owner` is for the audit trail, not for the page."""

    def __init__(self, signed_in: str, owner: str) -> None:
        super().__init__(
            f"you are signed in to the gateway as {signed_in}, but this consent link was made for another gateway "
            "account; nothing was connected. Use the link your own client gave you"
        )
        self.signed_in = signed_in
        self.owner = owner


class NotTheSigningInBrowser(ConsentRefused):
    """The provider's answer arrived in a browser other than the one that signed in. `user`/`server`: whose flow."""

    def __init__(self, user: str, server: ServerRef) -> None:
        super().__init__(
            "this authorization was not started in this browser; nothing was connected. Start again from your "
            "client, in the browser where you sign in to the gateway"
        )
        self.user = user
        self.server = server


@dataclass(slots=True)
class _Ticket:
    user: str
    server: ServerRef
    failures: int = 0

    def record(self) -> Record:
        return {"u": self.user, "s": self.server.key, "f": self.failures}

    @staticmethod
    def of(record: Record | None) -> _Ticket | None:
        try:
            return _Ticket(str(record["u"]), ServerRef.parse(str(record["s"])), int(record["f"])) if record else None
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class _Flow:
    user: str
    server: ServerRef
    verifier: str = field(repr=False)
    redirect_uri: str
    browser: bytes = field(repr=False)  # HMAC of the browser value, compared in constant time

    def record(self) -> Record:
        browser = base64.b64encode(self.browser).decode()
        return {"u": self.user, "s": self.server.key, "v": self.verifier, "r": self.redirect_uri, "b": browser}

    @staticmethod
    def of(record: Record | None) -> _Flow | None:
        if not record:
            return None
        try:
            server, browser = ServerRef.parse(str(record["s"])), base64.b64decode(str(record["b"]), validate=True)
            return _Flow(str(record["u"]), server, str(record["v"]), str(record["r"]), browser)
        except (KeyError, TypeError, ValueError, binascii.Error):
            return None


@dataclass(frozen=True, slots=True)
class ConsentFor:
    """Whose account for which server a ticket or a flow connects."""

    user: str
    server: ServerRef


@dataclass(frozen=True, slots=True)
class Finished:
    user: str
    server: ServerRef
    code: str = field(repr=False)
    verifier: str = field(repr=False)
    redirect_uri: str


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def new_browser_value() -> str:
    return secrets.token_urlsafe(32)


class ConsentFlows:
    """Pending consent tickets and flows, bounded per user, each single-use and short-lived: in this process's
    memory, or with `tickets`, `flows` and `key` given, the fleet's (any replica serves each step of a flow)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        tickets_per_user: int = TICKETS_PER_USER,
        flows_per_user: int = FLOWS_PER_USER,
        total: int = MAX_PENDING,
        tickets: Pending | None = None,
        flows: Pending | None = None,
        keys: Sequence[bytes] = (),
    ) -> None:
        self._clock = clock
        self._tickets = tickets or LocalPending(tickets_per_user, total, clock)
        self._flows = flows or LocalPending(flows_per_user, total, clock)
        # Keys the CSRF tokens and browser bindings: the fleet's (from the master key), or this process's, like the
        # tables it protects.
        # (Made with the first; checked against each: replicas rolling out a new master key still agree.)
        self._keys = tuple(keys) or (secrets.token_bytes(32),)

    async def ticket(self, user: str, server: ServerRef) -> str:
        """The consent ticket of `user` for `server`: the live one, renewed, or a new one."""
        for value, record in await self._tickets.owned(user):
            found = _Ticket.of(record)
            if found is not None and found.server == server:
                await self._tickets.put(value, user, found.record(), TICKET_SECONDS)
                return value
        value = secrets.token_urlsafe(32)
        await self._tickets.put(value, user, _Ticket(user, server).record(), TICKET_SECONDS)
        return value

    def elicitation_id(self, ticket: str) -> str:
        """A stable id for the elicitation of `ticket` that reveals nothing of it (clients log ids, not URLs)."""
        return self._mac(b"elicitation", ticket)[:16]

    async def _ticket(self, ticket: str) -> _Ticket | None:
        return _Ticket.of(await self._tickets.get(ticket)) if SECRET_SHAPE.fullmatch(ticket) else None

    async def pending(self, ticket: str) -> ConsentFor:
        """What `ticket` is for, without using it. Raises ConsentLinkInvalid."""
        found = await self._ticket(ticket)
        if found is None:
            raise ConsentLinkInvalid()
        return ConsentFor(found.user, found.server)

    def csrf(self, ticket: str, browser: str) -> str:
        """The CSRF token of the consent form for `ticket` shown in `browser`."""
        return self._mac(b"csrf", ticket, browser)

    async def check_form(self, ticket: str, browser: str | None, csrf: str) -> ConsentFor:
        """The posted form belongs to `ticket` and was shown in this browser. Raises ConsentLinkInvalid or
        FormNotFromThisBrowser; uses nothing."""
        pending = await self.pending(ticket)
        if browser is None or not SECRET_SHAPE.fullmatch(browser) or not SECRET_SHAPE.fullmatch(csrf):
            raise FormNotFromThisBrowser()
        if not any(hmac.compare_digest(csrf, self._mac(b"csrf", ticket, browser, key=k)) for k in self._keys):
            raise FormNotFromThisBrowser()
        return pending

    async def sign_in_failed(self, ticket: str) -> None:
        """Count a refused credential on this ticket's page; past the bound the link is spent."""
        found = await self._ticket(ticket)
        if found is not None:
            found.failures += 1
            if found.failures >= MAX_SIGN_IN_FAILURES:
                await self._tickets.pop(ticket)
            else:
                await self._tickets.replace(ticket, found.record())

    async def claim(self, ticket: str, signed_in: Principal) -> ConsentFor:
        """`signed_in` (whom the gateway authenticated in this browser) is the ticket's user. Otherwise the link is
        spent (whoever it reached is not its owner: it has leaked) and NotTheLinksAccount is raised."""
        pending = await self.pending(ticket)
        if signed_in.kind is not PrincipalKind.USER or signed_in.name != pending.user:
            await self._tickets.pop(ticket)
            raise NotTheLinksAccount(signed_in.subject, pending.user)
        return pending

    async def begin(
        self,
        ticket: str,
        browser: str,
        signed_in: Principal,
        authorization_url: str,
        client_id: str,
        scopes: tuple[str, ...],
        resource: str,
        redirect_uri: str,
    ) -> str:
        """Spend the ticket of `signed_in` and return the provider URL to send this browser to."""
        pending = await self.claim(ticket, signed_in)
        if await self._tickets.pop(ticket) is None:  # (another request of the same link spent it meanwhile)
            raise ConsentLinkInvalid()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        flow = _Flow(pending.user, pending.server, verifier, redirect_uri, self._browser_mac(browser))
        await self._flows.put(state, pending.user, flow.record(), TICKET_SECONDS)
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if resource:  # RFC 8707: the backend the token is for (a stdio server has no URL to name)
            query["resource"] = resource
        if scopes:
            query["scope"] = " ".join(scopes)
        separator = "&" if "?" in authorization_url else "?"
        return f"{authorization_url}{separator}{urlencode(query)}"

    async def server_of(self, state: str) -> ServerRef | None:
        found = _Flow.of(await self._flows.get(state)) if SECRET_SHAPE.fullmatch(state) else None
        return found.server if found is not None else None

    async def forget(self, user: str) -> None:
        """Drop every pending ticket and flow of `user` (their access was revoked: no consent of theirs may finish
        and store tokens afterwards)."""
        await self._tickets.drop_owner(user)
        await self._flows.drop_owner(user)

    async def abandon(self, state: str) -> None:
        """The provider answered with an error: the flow is over, whichever browser brought the answer."""
        if SECRET_SHAPE.fullmatch(state):
            await self._flows.pop(state)

    async def finish(self, state: str, browser: str | None, code: str) -> Finished:
        """The flow of `state`, spent. Raises ConsentStateInvalid, or NotTheSigningInBrowser (the flow is spent too:
        a state seen in another browser has leaked)."""
        flow = _Flow.of(await self._flows.pop(state)) if SECRET_SHAPE.fullmatch(state) else None
        if flow is None:
            raise ConsentStateInvalid()
        if browser is None or not SECRET_SHAPE.fullmatch(browser):
            raise NotTheSigningInBrowser(flow.user, flow.server)
        if not any(hmac.compare_digest(flow.browser, self._browser_mac(browser, k)) for k in self._keys):
            raise NotTheSigningInBrowser(flow.user, flow.server)
        return Finished(flow.user, flow.server, code, flow.verifier, flow.redirect_uri)

    def _mac(self, purpose: bytes, *parts: str, key: bytes | None = None) -> str:
        message = b"\0".join([purpose, *(part.encode() for part in parts)])
        digest = hmac.new(key or self._keys[0], message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _browser_mac(self, browser: str, key: bytes | None = None) -> bytes:
        return hmac.new(key or self._keys[0], b"browser\0" + browser.encode(), hashlib.sha256).digest()

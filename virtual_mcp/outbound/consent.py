"""Per-user OAuth consent (authorization code + PKCE S256): the gateway's own start URL, bound to the user.

1. A call needs a user's token that the vault does not hold: `ConsentRequired` carries a start URL with a
   single-use ticket bound to (user, server), valid for a few minutes.
2. The user opens it in a browser: the ticket becomes a `state` (random, single use) with a PKCE verifier kept
   here, and the browser is sent to the provider with `state`, the S256 challenge and the backend's RFC 8707
   `resource`.
3. The provider redirects to the gateway's callback: `state` finds the flow, the code is exchanged with the
   verifier, and the token set is stored for (user, server).
Nothing here is ever written to a log: tickets, states, codes and verifiers are credentials while they live.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from virtual_mcp.errors import BadRequest, GatewayError
from virtual_mcp.types import ServerRef

TICKET_SECONDS = 600.0
_MAX_PENDING = 10_000


class ConsentRequired(GatewayError):
    """The caller must connect their account for `server` first; `url` is where."""

    jsonrpc_code = -32042  # URL elicitation required (MCP)
    http_status = 200

    def __init__(self, server: ServerRef, url: str, elicitation_id: str, reason: str) -> None:
        super().__init__(f"{reason}: open the link to connect your account for {server.key}, then retry")
        self.server = server
        self.url = url
        self.elicitation_id = elicitation_id


@dataclass(frozen=True, slots=True)
class _Ticket:
    user: str
    server: ServerRef
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Flow:
    user: str
    server: ServerRef
    verifier: str = field(repr=False)
    redirect_uri: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Finished:
    user: str
    server: ServerRef
    code: str = field(repr=False)
    verifier: str = field(repr=False)
    redirect_uri: str


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class ConsentFlows:
    """Pending consent tickets and flows, in memory, bounded, each single-use and short-lived."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tickets: dict[str, _Ticket] = {}
        self._flows: dict[str, _Flow] = {}

    def ticket(self, user: str, server: ServerRef) -> str:
        self._prune()
        value = secrets.token_urlsafe(32)
        self._tickets[value] = _Ticket(user, server, self._clock() + TICKET_SECONDS)
        return value

    def begin(
        self,
        ticket: str,
        authorization_url: str,
        client_id: str,
        scopes: tuple[str, ...],
        resource: str,
        redirect_uri: str,
    ) -> str:
        """The provider URL to send the browser to. Raises BadRequest for an unknown, used or expired ticket."""
        found = self._tickets.pop(ticket, None)
        if found is None or found.expires_at < self._clock():
            raise BadRequest("this consent link is unknown, already used or expired; retry the call for a new one")
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        self._flows[state] = _Flow(found.user, found.server, verifier, redirect_uri, self._clock() + TICKET_SECONDS)
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
            "resource": resource,
        }
        if scopes:
            query["scope"] = " ".join(scopes)
        separator = "&" if "?" in authorization_url else "?"
        return f"{authorization_url}{separator}{urlencode(query)}"

    def ticket_server(self, ticket: str) -> ServerRef | None:
        found = self._tickets.get(ticket)
        return found.server if found is not None else None

    def finish(self, state: str, code: str) -> Finished:
        flow = self._flows.pop(state, None)
        if flow is None or flow.expires_at < self._clock():
            raise BadRequest("unknown or expired authorization state; start again from your client")
        return Finished(flow.user, flow.server, code, flow.verifier, flow.redirect_uri)

    def _prune(self) -> None:
        now = self._clock()
        for table in (self._tickets, self._flows):
            for key in [k for k, v in table.items() if v.expires_at < now]:
                del table[key]
            while len(table) >= _MAX_PENDING:
                del table[next(iter(table))]

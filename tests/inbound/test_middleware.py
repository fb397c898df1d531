"""Authentication as one ASGI layer (virtual_mcp/inbound/middleware.py): every route that needs a caller answers one
who did not authenticate in one way, with a challenge whose metadata document the gateway serves, and never runs
for them.

Over a real gateway with the production security planes (tokens, JWTs, audit) and a real backend; the layer on its
own with the real authenticator in local mode, behind a recording ASGI app."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.hostile.front_support import FrontLab, front_lab
from tests.support import LOCAL_USER, write_config
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.gateway.app import create_app
from virtual_mcp.gateway.routes import needs_caller
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.metadata import WELL_KNOWN, ResourceMetadata
from virtual_mcp.inbound.middleware import STATE_KEY, Authenticate, authentication
from virtual_mcp.registry import Registry, build_registry
from virtual_mcp.types import Authentication, AuthMethod

CHALLENGE = re.compile(
    r'Bearer resource_metadata="(?P<url>[^"]+)"(?:, error="(?P<error>[^"]+)")?(?:, error_description="[^"]*")?'
)
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'

# Every kind of route that needs a caller, with the document its challenge names ("": the gateway's root one).
NEEDS_CALLER: list[tuple[str, str, str]] = [
    ("POST", "/mcp", "/mcp"),
    ("DELETE", "/mcp", "/mcp"),
    ("POST", "/mcp-server/lab/tools/server", "/mcp-server/lab/tools/server"),
    ("GET", "/mcp-server/lab/tools/server", "/mcp-server/lab/tools/server"),
    ("PUT", "/mcp-server/lab/tools/server", "/mcp-server/lab/tools/server"),  # a method no route serves
    ("POST", "/mcp-server/lab/nope/server", "/mcp-server/lab/nope/server"),  # unconfigured: looks configured
    ("POST", "/mcp-server/lab", ""),  # no server could be configured here
    ("POST", "/mcp-server/a%0Ab/c/server", ""),  # a line feed: no route serves such a path's own document
    ("GET", "/admin/groups/lab", ""),
    ("GET", "/admin/groups/nope", ""),
    ("GET", "/admin", ""),
    ("GET", "/oauth/connections", ""),
    ("DELETE", "/oauth/connections/lab/tools", ""),
]
CREDENTIALS: dict[str, tuple[dict[str, str], str, int, str | None]] = {
    # label: (headers, query, status, the challenge's error)
    "none": ({}, "", 401, None),
    "refused token": ({"authorization": "Bearer vmcp_000000000000_nope"}, "", 401, "invalid_token"),
    "Basic": ({"authorization": "Basic YTpi"}, "", 401, None),
    "token in the query": ({}, "?access_token=vmcp_000000000000_q", 400, "invalid_request"),
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FrontLab]:
    async with front_lab(tmp_path_factory.mktemp("auth")) as front:
        yield front


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize(("method", "path", "document"), NEEDS_CALLER, ids=[f"{m} {p}" for m, p, _ in NEEDS_CALLER])
async def test_every_route_that_needs_a_caller_challenges_with_a_document_it_serves(
    lab: FrontLab, method: str, path: str, document: str, credential: str
) -> None:
    headers, query, status, error = CREDENTIALS[credential]
    url = lab.gw.url
    # httpx2, not httpx: httpx's log lines are scanned for secrets, and these URLs carry tokens on purpose.
    async with httpx2.AsyncClient() as http:
        refused = await http.request(method, f"{url}{path}{query}", headers={**ACCEPT, **headers}, content=INIT)
        assert refused.status_code == status, (refused.status_code, refused.text)
        assert refused.json()["error"]["code"] == -32001
        found = CHALLENGE.fullmatch(refused.headers["www-authenticate"])
        assert found is not None, refused.headers["www-authenticate"]
        served = await http.get(found["url"])
        assert served.status_code == 200, found["url"]
        assert served.json()["resource"] == f"{url}{document}"
        assert found["url"] == f"{url}{WELL_KNOWN}{document}"
        assert found["error"] == error
    await lab.good_call()


@pytest.mark.parametrize(("method", "path"), [("GET", "/oauth/connections"), ("GET", "/admin/groups/lab")])
async def test_a_refusal_is_logged_with_the_path_asked_for(
    lab: FrontLab, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="virtual_mcp"):
        async with httpx2.AsyncClient() as http:
            assert (await http.request(method, f"{lab.gw.url}{path}")).status_code == 401
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert refusals == [f"refused {method} on {path}: missing bearer token (Authorization: Bearer ...)"]


async def test_an_unauthenticated_call_of_an_unconfigured_server_is_not_audited(lab: FrontLab) -> None:
    """The unconfigured-server route records a refusal for the caller it found: it never runs without one."""
    before = len(await lab.gw.audit(limit=100_000))
    async with httpx2.AsyncClient() as http:
        refused = await http.post(f"{lab.gw.url}/mcp-server/lab/nope/server", headers=ACCEPT, content=INIT)
        assert refused.status_code == 401
        forbidden = await http.post(
            f"{lab.gw.url}/mcp-server/lab/nope/server",
            headers={**ACCEPT, "authorization": f"Bearer {lab.tokens['mallory']}"},
            content=INIT,
        )
        assert forbidden.status_code == 403
    events = await lab.gw.audit(limit=100_000)
    assert len(events) == before + 1 and events[0].server == "lab/nope" and events[0].outcome == "denied"


# -- the router's table: every route is public by declaration or behind the middleware -------------------------------

PUBLIC = {"/healthz", "/readyz", "/metrics", WELL_KNOWN, WELL_KNOWN + "/{path:path}", "/oauth/start", "/oauth/callback"}
PARAMETERS = {"{group}": "lab", "{server}": "echo", "{rest:path}": "lab/nope/server", "{path:path}": "mcp"}


def registry_of(tmp_path: Path) -> Registry:
    return build_registry(load_config_dir(write_config(tmp_path / "servers.d", {"echo": "http://127.0.0.1:9"})))


async def test_no_route_answers_a_caller_the_middleware_did_not_let_in(tmp_path: Path) -> None:
    """Walks the application's routing table: a route that is not declared public answers every method it serves
    with the 401 of the middleware, so a new route cannot be added outside it unnoticed."""
    app = create_app(registry_of(tmp_path), GatewaySettings())  # no local user: nobody gets in without a token
    checked = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        for route in app.routes:
            assert isinstance(route, Route)
            path = route.path
            for template, value in PARAMETERS.items():
                path = path.replace(template, value)
            assert needs_caller(path) is (route.path not in PUBLIC), route.path
            if route.path in PUBLIC:
                continue
            for method in sorted((route.methods or set()) - {"HEAD"}):
                answer = await http.request(method, path, headers=ACCEPT, content=INIT)
                assert answer.status_code == 401, (method, route.path, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer resource_metadata=")
                checked += 1
    assert checked >= 8  # /mcp and the server's endpoint (3 methods each), admin, unconfigured, connections


# -- the layer on its own ------------------------------------------------------------------------------------------


class Recorder:
    """The route behind the layer: records who it was called for."""

    def __init__(self) -> None:
        self.seen: list[Authentication] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(authentication(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(app: Any, client: str, path: str = "/admin/groups/lab") -> tuple[int, dict[bytes, bytes], Scope]:
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": (client, 50000),
        "scheme": "http",
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"]), dict(sent[0]["headers"]), scope


async def test_the_layer_lets_in_only_the_caller_it_authenticated(tmp_path: Path) -> None:
    registry = registry_of(tmp_path)
    authenticator = Authenticator(registry, local=LocalIdentity(registry, LOCAL_USER))  # loopback callers only
    recorder = Recorder()
    app = Authenticate(recorder, authenticator, ResourceMetadata(), needs_caller)
    status, headers, _ = await call(app, "192.0.2.7")
    assert status == 401 and recorder.seen == []
    assert (
        headers[b"www-authenticate"]
        == b'Bearer resource_metadata="http://127.0.0.1:8000/.well-known/oauth-protected-resource"'
    )
    status, _, scope = await call(app, "127.0.0.1")
    assert status == 204 and [a.principal.name for a in recorder.seen] == [LOCAL_USER]
    assert scope["state"][STATE_KEY] == recorder.seen[0] and recorder.seen[0].method is AuthMethod.LOCAL
    # A public route is passed through without a caller, and cannot read one.
    with pytest.raises(RuntimeError, match="not behind Authenticate"):
        await call(app, "192.0.2.7", "/healthz")


def test_a_scope_without_a_caller_is_a_wiring_bug() -> None:
    with pytest.raises(RuntimeError, match="'/admin/groups/lab'"):
        authentication({"type": "http", "path": "/admin/groups/lab"})
    with pytest.raises(RuntimeError):
        authentication({"type": "http", "path": "/mcp", "state": {STATE_KEY: "alice"}})

"""A backend that echoes every credential it receives, into every part of every answer, gets none of them to the
caller, a log line, an audit record (database and JSON lines) or /metrics; and backend answers the gateway must
refuse (nested too deep) or repair (`_meta` keys only the gateway may set) get their precise answer, after which the
gateway serves the next caller as before.

Every credential kind the gateway presents: static secret headers, a client-credentials token (2LO) and a user's
token (3LO) from the real authorization server, a caller's IdP JWT (checked passthrough) and a caller's forwarded
`x-tfy-mcp-headers` values; every place an echo can hide; both protocol eras (a 2025-11-25 caller in front of a
2025-11-25 backend, a 2026-07-28 caller in front of a 2026-07-28 backend). Raw HTTP from the test, so every byte the
caller gets is seen, and decoded the ways an echo encodes it (JSON escapes, URL encoding, base64).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import httpx2
import pytest
from mcp.shared.inbound import NAME_BEARING_METHODS

from tests.conftest import CAPTURED
from tests.hostile.echoing import DEPTH_LIMIT, ECHO_TOOLS, LEGACY, MODERN, ODD_TOOLS, Echoing
from tests.lab_config import ALICE, BOB
from tests.oauth_server import CC_CLIENT_ID, CODE_CLIENT_ID, REDIRECT_URI, AuthServer, authorization_server, pkce_pair
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt, secure_gateway
from tests.sensitive import mark
from tests.support import serve
from virtual_mcp.outbound.credentials import user_token_key
from virtual_mcp.outbound.oauth_client import OAuthClient
from virtual_mcp.outbound.token_cache import VaultTokenCache
from virtual_mcp.types import PrincipalKind, ServerRef
from virtual_mcp.vault import LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

AUDIENCE = "https://echo.northwind.example/mcp"
ACCEPT = "application/json, text/event-stream"
ERAS = {"legacy": LEGACY, "modern": MODERN}  # the caller's protocol version, and its backend's
KINDS = ("static", "2lo", "3lo", "passthrough", "forwarded")
TENANT = "northwind-tenant"  # a literal header value of the static server: configuration, not a secret
STATIC_TOKEN = f"static-{secrets.token_urlsafe(24)}"
STATIC_KEY = f"key-{secrets.token_hex(16)}"
REDACTED = "[REDACTED]"

AUTH = {
    "static": f"""
    auth_data:
      type: header
      headers:
        Authorization: "Bearer tfy-secret://t:echo:token"
        X-Api-Key: "tfy-secret://t:echo:key"
        X-Tenant: {TENANT}""",
    "2lo": """
    auth_data:
      type: oauth2
      grant_type: client_credentials
      token_url: {token}
      client_id: {cc_client}
      client_secret: tfy-secret://t:echo:cc
      scopes: [mcp:read]""",
    "3lo": """
    auth_data:
      type: oauth2
      grant_type: authorization_code
      authorization_url: {authorize}
      token_url: {token}
      client_id: {code_client}
      client_secret: tfy-secret://t:echo:code
      scopes: [mcp:tools]
      code_challenge_methods_supported: [S256]""",
    "passthrough": f"""
    auth_data:
      type: passthrough
      audience: {AUDIENCE}""",
    "forwarded": """
    forwardable_headers: [Authorization, X-Api-Key]""",
    "odd": "",
}
SERVER = """
  - name: {name}
    type: integration/mcp-server/remote
    url: {url}
    authorized_subjects: [team:platform]
    audit: {{arguments: true, results: true}}{auth}"""
IDENTITIES = f"type: identities\nteams:\n  - name: platform\n    members: [{ALICE}, {BOB}]\n"


def path(name: str) -> str:
    return f"/mcp-server/echo/{name}/server"


# -- a raw client ----------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    response: httpx2.Response
    messages: list[dict[str, Any]]  # every JSON-RPC message of the answer, in order (notifications, then the answer)

    @property
    def final(self) -> dict[str, Any]:
        [final] = [m for m in self.messages if "id" in m and "method" not in m]
        return final

    @property
    def result(self) -> dict[str, Any]:
        assert "result" in self.final, self.final
        result: dict[str, Any] = self.final["result"]
        return result

    @property
    def error(self) -> dict[str, Any]:
        assert "error" in self.final, self.final
        error: dict[str, Any] = self.final["error"]
        return error

    def notes(self, method: str) -> list[dict[str, Any]]:
        return [m["params"] for m in self.messages if m.get("method") == method]


def messages_of(response: httpx2.Response) -> list[dict[str, Any]]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    return [response.json()] if response.content else []


@dataclass
class Caller:
    """One caller of one endpoint in one era: its credential, its forwarded headers, its 2025-11-25 session."""

    http: httpx2.AsyncClient
    url: str
    era: str
    bearer: str
    headers: dict[str, str] = field(default_factory=dict)
    session: str | None = None
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def request(self, method: str, params: dict[str, Any] | None = None, **meta: Any) -> Answer:
        if self.era == LEGACY and self.session is None:
            opened = await self._post(
                "initialize",
                {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            )
            assert opened.status_code == 200, opened.text
            self.session = opened.headers["mcp-session-id"]
            await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        params = dict(params or {})
        if self.era == MODERN:
            meta = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                **meta,
            }
        if meta:
            params["_meta"] = meta
        response = await self._post(method, params)
        return Answer(response, messages_of(response))

    async def _post(self, method: str, params: dict[str, Any]) -> httpx2.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params:
            body["params"] = params
        return await self._send(body)

    async def _send(self, body: dict[str, Any]) -> httpx2.Response:
        headers = {"accept": ACCEPT, "content-type": "application/json", "authorization": f"Bearer {self.bearer}"}
        headers.update(self.headers)
        if self.session is not None:
            headers["mcp-session-id"] = self.session
            headers["mcp-protocol-version"] = LEGACY
        if self.era == MODERN:
            headers["mcp-protocol-version"] = MODERN
            headers["mcp-method"] = body["method"]
            key = NAME_BEARING_METHODS.get(body["method"])
            if key is not None:
                headers["mcp-name"] = body["params"][key]
        return await self.http.post(self.url, content=json.dumps(body).encode(), headers=headers)


# -- the world: the authorization server, the hostile backend, the gateway ---------------------------------------------


@dataclass
class World:
    gw: SecureGateway
    echo: Echoing
    http: httpx2.AsyncClient
    alice: str
    bob: str
    jwt: str
    callers: dict[tuple[str, str], Caller] = field(default_factory=dict)

    def caller(self, kind: str, era: str) -> Caller:
        """Alice on the `kind` server of `era`, with the credential that kind needs (one session per pair)."""
        key = (kind, era)
        if key not in self.callers:
            name = f"{kind}-{era}"
            bearer = self.jwt if kind == "passthrough" else self.alice
            headers: dict[str, str] = {}
            if kind == "forwarded":
                forwarded = {
                    "Authorization": f"Bearer fwd-{secrets.token_urlsafe(20)}",
                    "X-Api-Key": secrets.token_hex(12),
                }
                mark(*forwarded.values(), forwarded["Authorization"].removeprefix("Bearer "))
                headers["x-tfy-mcp-headers"] = json.dumps({f"echo/{name}": forwarded})
            self.callers[key] = Caller(self.http, self.gw.url + path(name), ERAS[era], bearer, headers)
        return self.callers[key]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def connect_alice(gw: SecureGateway, auth: AuthServer, server: str, url: str) -> None:
    """Alice connected her account for a per-user server earlier: her tokens, from the real authorization server
    (authorization code with PKCE, for that backend as resource), are in the vault as a consent leaves them."""
    verifier, challenge = pkce_pair()
    query = await auth.login(auth.authorization_url(challenge, secrets.token_urlsafe(8), resource=url))
    client = OAuthClient(
        token_url=auth.token_endpoint,
        client_id=CODE_CLIENT_ID,
        client_secret=auth.secret(CODE_CLIENT_ID),
        scopes=("mcp:tools",),
        resource=url,
    )
    async with httpx.AsyncClient() as http:
        token = await client.exchange_code(http, query["code"], REDIRECT_URI, verifier)
    mark(token.access_token, token.refresh_token or "")
    store = VaultTokenCache(OAuthTokenStore(gw.db, LocalKeyProvider.load(gw.data_dir)))
    await store.set(user_token_key(ServerRef.parse(server), ALICE), token)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = Path(tmp_path_factory.mktemp("echoing"))
    echo = Echoing()
    async with (
        authorization_server(access_token_ttl=3600) as auth,
        serve(echo) as hostile,
        httpx2.AsyncClient(timeout=30) as http,
    ):
        urls = {era: f"{hostile.url}/{era}/mcp" for era in ERAS}
        endpoints = {
            "token": auth.token_endpoint,
            "authorize": auth.authorization_endpoint,
            "cc_client": CC_CLIENT_ID,
            "code_client": CODE_CLIENT_ID,
        }
        servers = "".join(
            SERVER.format(name=f"{kind}-{era}", url=urls[era], auth=AUTH[kind].format(**endpoints))
            for kind in (*KINDS, "odd")
            for era in ERAS
        ) + "".join(
            SERVER.format(name=f"listfail-{era}", url=f"{hostile.url}/{era}/fail/mcp", auth=AUTH["static"])
            for era in ERAS
        )
        config = tmp / "servers.d"
        config.mkdir()
        (config / "echo.yaml").write_text(
            f"name: echo\ntype: provider-account/mcp-server-group\nintegrations:{servers}\n"
        )
        (config / "ids.yaml").write_text(IDENTITIES)
        values = {
            "tfy-secret://t:echo:token": STATIC_TOKEN,
            "tfy-secret://t:echo:key": STATIC_KEY,
            "tfy-secret://t:echo:cc": auth.secret(CC_CLIENT_ID),
            "tfy-secret://t:echo:code": auth.secret(CODE_CLIENT_ID),
        }
        async with secure_gateway(config, tmp / "data", values) as gw:
            for era in ERAS:
                await connect_alice(gw, auth, f"echo/3lo-{era}", urls[era])
            jwt = idp_jwt(ALICE, [GATEWAY_AUDIENCE, AUDIENCE], time.time(), groups=["platform"])
            alice = await gw.token(PrincipalKind.USER, ALICE)
            bob = await gw.token(PrincipalKind.USER, BOB)
            yield World(gw, echo, http, alice, bob, jwt)


# -- what must never come back -------------------------------------------------------------------------------------

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}")


def revealed(answer: Answer) -> str:
    """Everything the caller got, as it could read it: the bytes, the JSON strings unescaped, URL-decoded, and every
    base64-looking run decoded (at each of the four offsets it could start at)."""
    text = "\n".join([answer.response.text, *(json.dumps(m, ensure_ascii=False) for m in answer.messages)])
    text += "\n" + unquote(text)
    decoded = []
    for run in _BASE64_RUN.findall(text):
        for skip in range(4):
            chunk = run[skip:]
            chunk = chunk[: len(chunk) - len(chunk) % 4].replace("+", "-").replace("/", "_")
            try:
                decoded.append(base64.urlsafe_b64decode(chunk).decode("latin-1"))
            except (binascii.Error, ValueError):
                continue
    return "\n".join([text, *decoded])


async def assert_nothing_leaked(world: World, answer: Answer, log_lines_before: int) -> None:
    """No credential the backend ever received is in the answer, a log line since the request, the audit trail
    (database and JSON lines) or the metrics."""
    credentials = world.echo.credentials
    assert credentials, "the backend received no credential: the case proves nothing"
    text = revealed(answer)
    assert [c for c in credentials if c in text] == [], "a presented credential reached the caller"
    lines = "\n".join(CAPTURED[0].lines[log_lines_before:])
    assert [c for c in credentials if c in lines] == [], "a presented credential reached a log line"
    await world.gw.audit_log.flush()
    assert world.gw.leaks() == [], "a presented credential reached the audit trail"
    metrics = world.gw.metrics.exposition().decode()
    assert [c for c in credentials if c in metrics] == [], "a presented credential reached /metrics"


def scrubbed_headers(headers: dict[str, Any], kind: str) -> None:
    """The echoed headers as the caller sees them: credentials replaced, everything else as the backend had it."""
    if kind == "none":
        assert "authorization" not in headers
        return
    assert headers["authorization"] == REDACTED
    if kind in ("static", "forwarded"):
        assert headers["x-api-key"] == REDACTED
    if kind == "static":
        assert headers["x-tenant"] == TENANT  # literal configuration: not a secret, not scrubbed
    assert headers["host"].startswith("127.0.0.1:")


def check_echo(text: str) -> None:
    assert text.startswith("you sent {") and REDACTED in text


# -- every credential kind x every place an echo can hide x both eras -----------------------------------------------

PLACES = (*ECHO_TOOLS, "tools/list", "resources/list", "resources/read", "prompts/list", "prompts/get")


async def ask(caller: Caller, place: str) -> Answer:
    if place in ECHO_TOOLS:
        meta: dict[str, Any] = {}
        if place == "progress":
            meta["progressToken"] = "p-1"
        if place == "log" and caller.era == MODERN:
            meta["io.modelcontextprotocol/logLevel"] = "debug"
        return await caller.request("tools/call", {"name": place, "arguments": {}}, **meta)
    if place == "resources/read":
        return await caller.request(place, {"uri": "echo://headers"})
    if place == "prompts/get":
        return await caller.request(place, {"name": "p", "arguments": {}})
    return await caller.request(place)


def check_answer(place: str, kind: str, answer: Answer) -> None:
    """The call was answered as the backend answered it, with only the credentials replaced."""
    assert answer.response.status_code == 200, answer.response.text
    if place == "rpc_error":
        error = answer.error
        assert error["code"] == -32000 and error["message"].startswith("upstream refused: you sent {")
        assert REDACTED in error["message"]
        scrubbed_headers(error["data"]["headers"], kind)
        return
    result = answer.result
    if place in ("text", "is_error"):
        check_echo(result["content"][0]["text"])
        assert result.get("isError", False) is (place == "is_error")
    elif place == "structured":
        scrubbed_headers(result["structuredContent"]["headers"], kind)
        check_echo(result["structuredContent"]["echo"])
    elif place == "meta":
        scrubbed_headers(result["_meta"]["echo"], kind)
        scrubbed_headers(result["content"][0]["_meta"]["echo"], kind)
    elif place == "blocks":
        kinds = [block["type"] for block in result["content"]]
        assert kinds == ["text", "image", "audio", "resource_link", "resource", "resource"]
        for data in (result["content"][1]["data"], result["content"][5]["resource"]["blob"]):
            base64.b64decode(data, validate=True)  # still base64: the credential was replaced in its encoding
        check_echo(result["content"][4]["resource"]["text"])
    elif place == "log":
        [note] = answer.notes("notifications/message")
        assert note["level"] == "error"
        scrubbed_headers(note["data"]["headers"], kind)
        assert result["content"][0]["text"] == "logged"
    elif place == "progress":
        [note] = answer.notes("notifications/progress")
        assert note["progressToken"] == "p-1" and (note["progress"], note["total"]) == (1, 2)
        check_echo(note["message"])
    elif place == "tools/list":
        tools = result["tools"]
        assert {t["name"] for t in tools} >= set(ECHO_TOOLS)
        listed_with = _listed_with(kind)
        for tool in tools:
            if listed_with == "none":
                assert tool["description"].startswith("you sent {")
            else:
                check_echo(tool["description"])
            scrubbed_headers(tool["_meta"]["echo"], listed_with)
            assert not any(key.startswith("virtual-mcp/") for key in tool["_meta"])  # the backend's claim is gone
    elif place == "resources/list":
        check_echo(result["resources"][0]["description"])
    elif place == "resources/read":
        text, blob = result["contents"]
        check_echo(text["text"])
        base64.b64decode(blob["blob"], validate=True)
    elif place == "prompts/list":
        check_echo(result["prompts"][0]["description"])
    elif place == "prompts/get":
        check_echo(result["messages"][0]["content"]["text"])
        check_echo(result["description"])


@pytest.mark.parametrize("era", sorted(ERAS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", PLACES)
async def test_no_presented_credential_comes_back(world: World, place: str, kind: str, era: str) -> None:
    caller = world.caller(kind, era)
    if place not in ECHO_TOOLS:
        # Lists, reads and gets of a server are fetched with its own credential, which a caller's forwarded headers
        # never are: a call first presents the caller's, so the case is about credentials the backend has seen
        # whichever cases ran before it (or none did, as on a fresh worker).
        await ask(caller, ECHO_TOOLS[0])
    before = len(CAPTURED[0].lines)
    answer = await ask(caller, place)
    check_answer(place, kind, answer)
    await assert_nothing_leaked(world, answer, before)
    if place in ECHO_TOOLS:
        [event] = await world.gw.audit(request_id=answer.response.headers["x-request-id"])
        assert (event.server, event.tool) == (f"echo/{kind}-{era}", place)
        assert event.outcome == ("failed" if place == "rpc_error" else "allowed")
        # The result is recorded (this server audits results), without the credentials: see assert_nothing_leaked.
        detail = event.detail or {}
        assert place == "rpc_error" or "result" in detail or "truncated" in detail


def _listed_with(kind: str) -> str:
    """Which credential a server's tool list is fetched with: a caller's forwarded headers never are (the list is
    the server's, fetched with its configured credential: none here)."""
    return kind if kind != "forwarded" else "none"


# -- answers the gateway refuses or repairs, then the next caller ------------------------------------------------------

TOO_DEEP = ("deep_result", "deep_unbalanced", "deep_in_stream", "deep_notification", "deep_error_data")


def depth_of(value: Any) -> int:
    return 1 + depth_of(value[0]) if isinstance(value, list) else 0


@pytest.mark.parametrize("era", sorted(ERAS))
@pytest.mark.parametrize("tool", ODD_TOOLS)
async def test_odd_answers_get_their_precise_answer_and_the_next_caller_is_served(
    world: World, tool: str, era: str
) -> None:
    before = len(CAPTURED[0].lines)
    url = world.gw.url + path(f"odd-{era}")
    answer = await Caller(world.http, url, ERAS[era], world.alice).request(
        "tools/call", {"name": tool, "arguments": {}}
    )
    assert answer.response.status_code == 200
    if tool in TOO_DEEP:
        # A protocol error of that backend, naming the limit: not -32603, not a traceback in the log.
        assert answer.error["code"] == -32012
        limit = f"the answer is nested deeper than {DEPTH_LIMIT} levels (the gateway's limit)"
        assert answer.error["message"] == f"backend 'echo/odd-{era}': {limit}"
        [event] = await world.gw.audit(request_id=answer.response.headers["x-request-id"])
        assert (event.tool, event.outcome) == (tool, "failed") and limit in (event.error or "")
    elif tool == "at_the_limit":
        assert depth_of(answer.result["structuredContent"]["v"]) == DEPTH_LIMIT - 3
    elif tool == "brackets_in_strings":
        assert answer.result["structuredContent"]["s"] == "[" * 5000 + "{" * 5000
    elif tool == "claims_a_source":
        # `virtual-mcp/...` keys are the gateway's: a backend cannot claim another server's identity with them.
        meta = answer.result["_meta"]
        assert meta["kept"] is True and not [key for key in meta if key.startswith("virtual-mcp/")]
    lines = CAPTURED[0].lines[before:]
    assert not [line for line in lines if "Traceback" in line or "RecursionError" in line]
    # The backend's next answer, to another caller, is served as usual.
    bob = Caller(world.http, url, ERAS[era], world.bob)
    served = await bob.request("tools/call", {"name": "text", "arguments": {}})
    assert served.result["content"][0]["text"].startswith("you sent {")


@pytest.mark.parametrize("era", sorted(ERAS))
async def test_the_aggregate_list_names_each_tools_true_source(world: World, era: str) -> None:
    """On /mcp every tool's `virtual-mcp/source` is the gateway's statement of where it comes from, whatever the
    backend put there (each echo tool claims to be echo/static-modern's `text`); and no credential is in the list."""
    before = len(CAPTURED[0].lines)
    answer = await Caller(world.http, f"{world.gw.url}/mcp", ERAS[era], world.alice).request("tools/list")
    tools = answer.result["tools"]
    servers = {tool["_meta"]["virtual-mcp/source"]["server"] for tool in tools}
    assert {"echo/static-modern", "echo/2lo-legacy", "echo/3lo-modern", "echo/odd-legacy"} <= servers
    for tool in tools:
        group, server, original = tool["name"].split("__")
        assert tool["_meta"]["virtual-mcp/source"] == {"server": f"{group}/{server}", "tool": original}
    await assert_nothing_leaked(world, answer, before)


@pytest.mark.parametrize("era", sorted(ERAS))
async def test_a_tools_list_error_echoing_the_api_key_is_logged_without_it(world: World, era: str) -> None:
    """The backend's refusal to list its tools is logged (the server is left out of lists for a while), with the
    static Authorization and X-Api-Key values it echoed removed: the log line comes from the scrubbed answer, not
    from the log filter (the test's capture sees lines before any filter)."""
    before = len(CAPTURED[0].lines)
    answer = await Caller(world.http, world.gw.url + path(f"listfail-{era}"), ERAS[era], world.alice).request(
        "tools/list"
    )
    assert answer.result["tools"] == []
    lines = CAPTURED[0].lines[before:]
    logged = [line for line in lines if f"echo/listfail-{era}" in line and "upstream refused: you sent" in line]
    assert logged and all(REDACTED in line and TENANT in line for line in logged)
    await assert_nothing_leaked(world, answer, before)

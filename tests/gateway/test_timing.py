"""Server-Timing on every answer of the endpoint routes: the phases of the request path, in both protocol eras, on
JSON answers and on event streams, on refusals, and with an OAuth client_credentials backend.

Raw HTTP with httpx2 (the MCP SDK's client), not httpx: httpx is the gateway's own upstream client, whose log lines
are scanned for secrets. The gateway runs with its default transport settings (event streams, not the SDK's
JSON-response mode): every 2025-11-25 request is answered with `text/event-stream`, 2026-07-28 ones with JSON unless
the handler sends a notification first.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.backends import build_lab
from tests.lab_config import ALICE, group, remote, write_identities
from tests.oauth.test_client_credentials import setup as client_credentials_setup
from tests.security_support import SecureGateway, secure_gateway
from tests.support import serve
from virtual_mcp.types import PrincipalKind

LEGACY, MODERN = "2025-11-25", "2026-07-28"
ERAS = [LEGACY, MODERN]
AGGREGATE, SINGLE = "/mcp", "/mcp-server/lab/tools/server"
ECHO = {AGGREGATE: "lab__tools__echo", SINGLE: "echo"}
ACCEPT = "application/json, text/event-stream"


def group_doc(url: str) -> str:
    return group("lab", remote("tools", url), remote("others-only", url, ["team:support"]))


TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def server_timing(response: httpx2.Response) -> dict[str, Decimal]:
    """The response's Server-Timing as {name: dur in ms}, checked: well-formed, one `total` last, durations not
    negative, and the phases adding up to no more than the total."""
    values = response.headers.get_list("server-timing")
    assert len(values) == 1, (response.status_code, values)
    entries: list[tuple[str, Decimal]] = []
    for entry in values[0].split(","):
        name, _, params = entry.strip().partition(";")
        assert TOKEN.fullmatch(name), entry
        key, _, value = params.partition("=")
        assert key == "dur", entry
        entries.append((name, Decimal(value)))
    names = [name for name, _ in entries]
    assert names[-1] == "total" and names.count("total") == 1 and len(set(names)) == len(names), names
    assert all(dur >= 0 for _, dur in entries), entries
    assert sum(dur for _, dur in entries[:-1]) <= entries[-1][1], entries
    return dict(entries)


def rpc(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON answer or an event stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line.removeprefix("data:"))
                if "id" in message:
                    return dict(message)
        raise AssertionError(f"no JSON-RPC response in the event stream: {response.text!r}")
    return dict(response.json())


class Raw:
    """A hand-made MCP client for one endpoint in one era, so each test sees every HTTP answer."""

    def __init__(self, http: httpx2.AsyncClient, url: str, era: str, bearer: str) -> None:
        self.http, self.url, self.era, self.bearer = http, url, era, bearer
        self.session: str | None = None
        self.capabilities: dict[str, Any] = {}  # the client capabilities it declares
        self._ids = itertools.count(1)

    async def open(self) -> httpx2.Response | None:
        """A 2025-11-25 session's handshake (its initialize answer); nothing for 2026-07-28."""
        if self.era == MODERN:
            return None
        params = {
            "protocolVersion": LEGACY,
            "capabilities": self.capabilities,
            "clientInfo": {"name": "raw", "version": "0"},
        }
        response = await self.call("initialize", params)
        assert response.status_code == 200, response.text
        self.session = response.headers["mcp-session-id"]
        notified = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert notified.status_code == 202, notified.text
        return response

    async def call(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        params = dict(params or {})
        if self.era == MODERN:
            meta = params.setdefault("_meta", {})
            meta["io.modelcontextprotocol/protocolVersion"] = MODERN
            meta["io.modelcontextprotocol/clientCapabilities"] = self.capabilities
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params:
            body["params"] = params
        return await self.post(body)

    async def post(self, body: dict[str, Any]) -> httpx2.Response:
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        if self.bearer:  # none: a local-mode gateway
            headers["authorization"] = f"Bearer {self.bearer}"
        if self.session:
            headers["mcp-session-id"] = self.session
            headers["mcp-protocol-version"] = LEGACY
        if self.era == MODERN:
            headers["mcp-protocol-version"] = MODERN
            headers["mcp-method"] = body["method"]
            if body["method"] == "tools/call":
                headers["mcp-name"] = body["params"]["name"]
        return await self.http.post(self.url, content=json.dumps(body).encode(), headers=headers)


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[tuple[SecureGateway, str]]:
    """The gateway (production security planes) in front of the lab backend; and alice's gateway token."""
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config)
        async with secure_gateway(config, tmp_path / "data") as gw:
            yield gw, await gw.token(PrincipalKind.USER, ALICE)


@pytest.mark.parametrize("path", [AGGREGATE, SINGLE])
@pytest.mark.parametrize("era", ERAS)
async def test_list_and_call_carry_their_phases(tmp_path: Path, era: str, path: str) -> None:
    async with lab(tmp_path) as (gw, alice), httpx2.AsyncClient() as http:
        raw = Raw(http, f"{gw.url}{path}", era, alice)
        opened = await raw.open()
        if opened is not None:
            assert {"auth", "policy"} <= set(server_timing(opened))

        listed = await raw.call("tools/list")
        assert listed.status_code == 200, listed.text
        assert ECHO[path] in {t["name"] for t in rpc(listed)["result"]["tools"]}
        assert {"auth", "policy", "upstream"} <= set(server_timing(listed))

        called = await raw.call("tools/call", {"name": ECHO[path], "arguments": {"text": "timed"}})
        assert called.status_code == 200, called.text
        assert rpc(called)["result"]["structuredContent"] == {"result": "timed"}
        # 2025-11-25: an event stream whose start waited for its first event, the result; 2026-07-28: JSON.
        stream = called.headers["content-type"].startswith("text/event-stream")
        assert stream == (era == LEGACY), called.headers["content-type"]
        timing = server_timing(called)
        assert {"auth", "policy", "upstream"} <= set(timing)
        # The forwarded call was measured to its end, not cut off when the response started.
        assert timing["upstream"] > 0


@pytest.mark.parametrize("era", ERAS)
async def test_a_stream_that_starts_with_a_notification_reports_what_was_known_then(tmp_path: Path, era: str) -> None:
    """Progress before the result: the start leaves with the first event, the running call counted up to then."""
    async with lab(tmp_path) as (gw, alice), httpx2.AsyncClient() as http:
        raw = Raw(http, f"{gw.url}{SINGLE}", era, alice)
        await raw.open()
        called = await raw.call(
            "tools/call", {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "p"}}
        )
        assert called.status_code == 200, called.text
        assert called.headers["content-type"].startswith("text/event-stream")
        assert '"notifications/progress"' in called.text
        assert rpc(called)["result"]["structuredContent"] == {"result": "2 steps"}
        assert {"auth", "policy", "upstream"} <= set(server_timing(called))


async def test_a_session_stream_starts_at_once_with_the_front_door_phases(tmp_path: Path) -> None:
    """A 2025-11-25 GET stream may stay silent for long: it is not held back, and carries what the front door did."""
    async with lab(tmp_path) as (gw, alice), httpx2.AsyncClient() as http:
        raw = Raw(http, f"{gw.url}{SINGLE}", LEGACY, alice)
        await raw.open()
        assert raw.session is not None
        headers = {
            "accept": "text/event-stream",
            "authorization": f"Bearer {alice}",
            "mcp-session-id": raw.session,
            "mcp-protocol-version": LEGACY,
        }
        async with http.stream("GET", raw.url, headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert list(server_timing(stream)) == ["auth", "policy", "total"]
        ended = await http.delete(raw.url, headers={**headers, "accept": ACCEPT})
        assert ended.status_code == 200, ended.text
        assert list(server_timing(ended)) == ["auth", "policy", "total"]


async def test_refusals_carry_the_front_door_phases(tmp_path: Path) -> None:
    async with lab(tmp_path) as (gw, alice), httpx2.AsyncClient() as http:

        async def post(path: str, bearer: str | None, **headers: str) -> httpx2.Response:
            if bearer:
                headers["authorization"] = f"Bearer {bearer}"
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            return await http.post(f"{gw.url}{path}", json=body, headers={"accept": ACCEPT, **headers})

        for path in (AGGREGATE, SINGLE, "/mcp-server/lab/no-such-server/server"):
            missing = await post(path, None)
            assert missing.status_code == 401, missing.text
            assert list(server_timing(missing)) == ["auth", "total"]
            forged = await post(path, "vmcp_000000000000_forged")
            assert forged.status_code == 401, forged.text
            assert list(server_timing(forged)) == ["auth", "total"]
        # Not authorized: a configured server and one that does not exist answer alike, header included.
        for path in ("/mcp-server/lab/others-only/server", "/mcp-server/lab/no-such-server/server"):
            forbidden = await post(path, alice)
            assert forbidden.status_code == 403, forbidden.text
            assert list(server_timing(forbidden)) == ["auth", "policy", "total"]
        # A malformed override header is the caller's mistake, found by the policy phase.
        bad = await post(SINGLE, alice, **{"x-tfy-mcp-headers": "{not json"})
        assert bad.status_code == 400, bad.text
        assert list(server_timing(bad)) == ["auth", "policy", "total"]
        # Refused before authentication (foreign Origin): only the total.
        foreign = await post(SINGLE, alice, origin="https://evil.example")
        assert foreign.status_code == 403, foreign.text
        assert list(server_timing(foreign)) == ["total"]
        # Routes other than the endpoints are not timed.
        health = await http.get(f"{gw.url}/healthz")
        assert "server-timing" not in health.headers


@pytest.mark.parametrize("era", ERAS)
async def test_an_oauth_backend_call_records_its_token_and_vault_phases(tmp_path: Path, era: str) -> None:
    """client_credentials against the real authorization server: the first call obtains the token (provider,
    sealed into the vault), a later one finds it in memory."""
    async with client_credentials_setup(tmp_path) as s, httpx2.AsyncClient() as http:
        raw = Raw(http, f"{s.gw.url}/mcp-server/g/analytics/server", era, s.alice)
        opened = await raw.open()
        first = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "oauth"}})
        assert first.status_code == 200, first.text
        assert rpc(first)["result"]["structuredContent"] == {"result": "oauth"}
        assert {"auth", "policy", "token_lookup", "upstream"} <= set(server_timing(first))
        # The first request to reach the backend obtains the token: a 2025-11-25 session's handshake (it meets the
        # backend, to offer what it offers), a 2026-07-28 client's first call.
        timing = server_timing(opened if opened is not None else first)
        assert {"token_lookup", "token_lock_wait", "token_provider", "vault"} <= set(timing), timing
        assert timing["token_provider"] > 0
        again = await raw.call("tools/call", {"name": "echo", "arguments": {"text": "again"}})
        assert again.status_code == 200, again.text
        warm = server_timing(again)
        assert {"token_lookup", "upstream"} <= set(warm) and "token_provider" not in warm, warm
        assert await s.auth.token_requests("client_credentials") == 1

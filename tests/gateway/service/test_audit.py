"""The audit trail end to end: real backends, the gateway with its production stores, real clients. Every record is
checked field by field, in the database and in the JSON lines file, and both files are scanned for every token,
secret and forwarded header value the tests created."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.backends import build_lab
from tests.lab_config import ALICE, CI, PLATFORM, group, header_auth, remote, write_identities
from tests.security_support import GATEWAY_AUDIENCE, SecureGateway, idp_jwt, secure_gateway
from tests.sensitive import mark
from tests.store_mode import state_database
from tests.support import Served, serve
from virtual_mcp.audit import AuditEvent
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore

LOGISTICS_AUDIENCE = "https://logistics.northwind.example/mcp"
SENTRY_SECRET = "sentry-service-token-audit-0123456789"
mark(SENTRY_SECRET)


def group_doc(plain: str, sentry: str, logistics: str, audience: str) -> str:
    return group(
        "lab",
        remote("plain", plain, audit={"arguments": True, "results": True, "redact": ["text"]}),
        remote(
            "sentry",
            sentry,
            [f"team:{PLATFORM}", f"virtualaccount:{CI}"],
            auth_data=header_auth(Authorization="Bearer tfy-secret://t:sentry:token"),
            forwardable_headers=["Authorization", "X-Org"],
        ),
        remote("logistics", logistics, auth_data={"type": "passthrough", "audience": audience}),
        remote("hidden", plain, ["team:nobody"]),
    )


ACCEPT = "application/json, text/event-stream"


@dataclass
class Lab:
    gw: SecureGateway
    plain: Served
    alice: str

    async def call(self, path: str, tool: str, arguments: dict[str, Any], bearer: str | None = None, **kw: Any) -> Any:
        """The result, or the JSON-RPC error the gateway answered with."""
        async with self.gw.client(path, bearer or self.alice, **kw) as client:
            try:
                return await client.call_tool(tool, arguments, raise_on_error=False)
            except MCPError as exc:
                return exc


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with (
        serve(build_lab().http_app(path="/mcp")) as plain,
        serve(build_lab().http_app(path="/mcp")) as sentry,
        serve(build_lab().http_app(path="/mcp")) as logistics,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        text = group_doc(plain=plain.url, sentry=sentry.url, logistics=logistics.url, audience=LOGISTICS_AUDIENCE)
        (config / "lab.yaml").write_text(text)
        write_identities(config)
        async with secure_gateway(config, tmp_path / "data", {"tfy-secret://t:sentry:token": SENTRY_SECRET}) as gw:
            yield Lab(gw, plain, await gw.token(PrincipalKind.USER, ALICE))


def common(event: AuditEvent, started: float, endpoint: str, subject: str = f"user:{ALICE}") -> None:
    assert started <= event.ts <= time.time()
    assert re.fullmatch(r"[0-9a-f]{16}", event.request_id), event.request_id
    assert event.subject == subject
    assert event.endpoint == endpoint
    assert event.latency_ms >= 0


async def test_allowed_calls_for_every_static_auth_mode(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        started = time.time()
        plain = await t.call("/mcp-server/lab/plain/server", "echo", {"text": "hello audit"})
        assert plain.structured_content == {"result": "hello audit"}
        overrides = {"lab/sentry": {"Authorization": "Bearer alice-own-sentry-value", "X-Org": "northwind-org-value"}}
        mark("alice-own-sentry-value", "northwind-org-value")
        await t.call("/mcp", "lab__sentry__add", {"a": 1, "b": 2}, headers={"x-tfy-mcp-headers": json.dumps(overrides)})
        jwt = idp_jwt(ALICE, [GATEWAY_AUDIENCE, LOGISTICS_AUDIENCE], time.time(), groups=["platform"])
        await t.call("/mcp-server/lab/logistics/server", "headers", {}, bearer=jwt)

        passthrough, header, none = await t.gw.audit()
        for event, endpoint in (
            (none, "/mcp-server/lab/plain/server"),
            (header, "/mcp"),
            (passthrough, "/mcp-server/lab/logistics/server"),
        ):
            common(event, started, endpoint)
            assert (event.kind, event.name, event.teams) == ("user", ALICE, ("platform",))
            assert (event.method, event.outcome, event.error) == ("tools/call", "allowed", None)
        assert (none.server, none.tool, none.called, none.auth_mode) == ("lab/plain", "echo", None, "none")
        assert none.forwarded_headers == ()
        # This server opted in to payloads, with `text` redacted wherever it appears.
        assert none.detail is not None and none.detail["arguments"] == {"text": "[REDACTED]"}
        assert none.detail["result"]["structuredContent"] == {"result": "hello audit"}
        assert (header.server, header.tool, header.called) == ("lab/sentry", "add", "lab__sentry__add")
        assert (header.auth_mode, header.forwarded_headers, header.detail) == (
            "header",
            ("authorization", "x-org"),
            None,
        )
        assert (passthrough.server, passthrough.tool, passthrough.auth_mode) == (
            "lab/logistics",
            "headers",
            "passthrough",
        )
        assert len({none.request_id, header.request_id, passthrough.request_id}) == 3

        # The JSON lines copy holds the same records.
        lines = [json.loads(line) for line in (t.gw.data_dir / "audit.jsonl").read_text().splitlines()]
        assert lines == [e.as_dict() for e in (none, header, passthrough)]
        assert t.gw.leaks() == []


async def test_denied_and_failed_calls(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        started = time.time()
        # A server alice may not use, through /mcp: she hears "unknown tool", the trail says why.
        hidden = await t.call("/mcp", "lab__hidden__echo", {"text": "x"})
        assert isinstance(hidden, MCPError) and hidden.code == -32602
        unknown = await t.call("/mcp-server/lab/plain/server", "no_such_tool", {})
        assert isinstance(unknown, MCPError) and unknown.code == -32602
        tool_error = await t.call("/mcp-server/lab/plain/server", "fail", {"reason": "on purpose"})
        assert tool_error.is_error
        # A passthrough server with a token that is not a JWT for it.
        refused_call = await t.call("/mcp-server/lab/logistics/server", "headers", {})
        assert isinstance(refused_call, MCPError) and refused_call.code == -32004
        t.plain.stop()
        await t.plain.server.shutdown()
        down = await t.call("/mcp-server/lab/plain/server", "echo", {"text": "anyone there"})
        assert isinstance(down, MCPError) and down.code == -32010

        down_event, refused, tool_failed, unknown_event, hidden_event = await t.gw.audit()
        for event in (down_event, refused, tool_failed, unknown_event, hidden_event):
            common(event, started, event.endpoint)
            assert event.method == "tools/call"
        assert (hidden_event.endpoint, hidden_event.outcome, hidden_event.error) == (
            "/mcp",
            "denied",
            "not authorized for this tool",
        )
        assert (hidden_event.server, hidden_event.tool, hidden_event.called) == (
            "lab/hidden",
            "echo",
            "lab__hidden__echo",
        )
        assert hidden_event.detail is None
        assert (unknown_event.outcome, unknown_event.error) == ("denied", "unknown tool")
        assert (unknown_event.server, unknown_event.tool) == ("lab/plain", "no_such_tool")
        assert (tool_failed.outcome, tool_failed.error) == ("allowed", "the tool reported an error (isError)")
        assert tool_failed.detail is not None and tool_failed.detail["result"]["isError"] is True
        assert (refused.outcome, refused.server, refused.auth_mode) == ("failed", "lab/logistics", "passthrough")
        assert refused.error is not None and "IdP JWT" in refused.error
        assert (down_event.outcome, down_event.server, down_event.tool) == ("failed", "lab/plain", "echo")
        assert down_event.error is not None and "lab/plain" in down_event.error

        assert [e.request_id for e in await t.gw.audit(outcome="denied")] == [
            unknown_event.request_id,
            hidden_event.request_id,
        ]
        assert t.gw.leaks() == []


async def test_a_denied_list_is_recorded_with_its_request_id(tmp_path: Path) -> None:
    """The front door's 403 for a server the caller may not use, and for one that does not exist, are both recorded;
    the record's request id is the one the answer carried."""
    async with lab(tmp_path) as t, httpx.AsyncClient() as http:
        started = time.time()
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"accept": ACCEPT, "authorization": f"Bearer {t.alice}"}
        hidden = await http.post(f"{t.gw.url}/mcp-server/lab/hidden/server", json=body, headers=headers)
        assert hidden.status_code == 403
        missing = await http.post(
            f"{t.gw.url}/mcp-server/lab/nothing/server", json=body, headers={**headers, "mcp-method": "tools/list"}
        )
        assert missing.status_code == 403
        later, first = await t.gw.audit()
        common(first, started, "/mcp-server/lab/hidden/server")
        assert first.request_id == hidden.headers["x-request-id"]
        assert (first.method, first.server, first.tool, first.outcome) == ("tools/list", "lab/hidden", None, "denied")
        assert first.error == "Forbidden: you are not authorized for lab/hidden"
        common(later, started, "/mcp-server/lab/nothing/server")
        assert later.request_id == missing.headers["x-request-id"]
        assert (later.method, later.server, later.outcome) == ("tools/list", "lab/nothing", "denied")


async def test_queries_filter_by_every_field(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        ci = await t.gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
        await t.call("/mcp-server/lab/plain/server", "echo", {"text": "a"})
        await t.call("/mcp-server/lab/plain/server", "add", {"a": 1, "b": 1})
        await t.call("/mcp-server/lab/sentry/server", "echo", {"text": "b"}, bearer=ci)
        everything = await t.gw.audit()
        assert len(everything) == 3
        assert [e.tool for e in await t.gw.audit(user=ALICE)] == ["add", "echo"]
        assert [e.tool for e in await t.gw.audit(team="platform")] == ["add", "echo"]
        [ci_event] = await t.gw.audit(virtual_account="ci")
        assert (ci_event.subject, ci_event.kind, ci_event.teams) == ("virtualaccount:ci", "virtualaccount", ())
        assert (ci_event.server, ci_event.auth_mode, ci_event.outcome) == ("lab/sentry", "header", "allowed")
        assert [e.tool for e in await t.gw.audit(server="lab/plain", tool="echo")] == ["echo"]
        assert await t.gw.audit(since=time.time() + 60) == []
        assert len(await t.gw.audit(until=time.time() + 60, limit=2)) == 2
        with pytest.raises(ValueError, match="not both"):
            await t.gw.audit(user=ALICE, virtual_account="ci")


async def test_no_audit_record_is_lost_when_the_gateway_stops(tmp_path: Path) -> None:
    """Calls answered just before shutdown are in the database after it, with nobody flushing."""
    async with lab(tmp_path) as t:
        for i in range(20):
            await t.call("/mcp-server/lab/plain/server", "echo", {"text": str(i)})
    async with state_database(tmp_path / "data") as db:
        events = await AuditStore(db).query(AuditQuery())
    assert len(events) == 20 and {e.outcome for e in events} == {"allowed"}
    assert len((tmp_path / "data" / "audit.jsonl").read_text().splitlines()) == 20

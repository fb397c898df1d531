"""A gateway with its production stores in front of a backend that takes any JSON, on a server that records
arguments and results; raw HTTP sessions, so a test can send what no well-behaved client would (a 4 MB tool name, a
lone surrogate, NaN); and the check that a record is in both sinks, field for field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastmcp import FastMCP

from tests.lab_config import group, identities, remote
from tests.security_support import SecureGateway, secure_gateway
from tests.support import Served, serve
from virtual_mcp.audit import AuditEvent
from virtual_mcp.types import PrincipalKind

ALICE = "alice@x.example"
PLAIN = "/mcp-server/lab/plain/server"
HIDDEN = "/mcp-server/lab/hidden/server"
ACCEPT = "application/json, text/event-stream"


# Mixed case on purpose: the configuration's identities are compared in canonical form (virtual_mcp/identity.py).
def group_doc(url: str) -> str:
    return group(
        "lab",
        remote(
            "plain",
            url,
            ["team:Platform", "user:Dave@X.example", "virtualaccount:CI"],  # names as typed
            audit={"arguments": True, "results": True, "redact": ["pin"]},
        ),
        remote("hidden", url, ["team:nobody"]),
    )


IDENTITIES = identities({"Platform": ["Alice@X.example", "kate@x.example"]}, ["CI"])  # names as typed


def backend() -> FastMCP:
    mcp: FastMCP = FastMCP("anything")

    @mcp.tool
    def take(value: Any = None) -> str:
        """Accepts any JSON value."""
        return "took it"

    @mcp.tool
    def echo(text: str) -> str:
        """Echo text back."""
        return text

    @mcp.tool
    def huge(size: int, depth: int = 0) -> dict[str, Any]:
        """A result `size` characters long, nested `depth` levels."""
        value: Any = "r" * size
        for _ in range(depth):
            value = {"r": value}
        return {"value": value}

    return mcp


@dataclass
class Lab:
    gw: SecureGateway
    backend: Served
    http: httpx.AsyncClient
    alice: str
    sessions: dict[str, RawSession] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gw.url

    async def session(self, bearer: str | None = None, path: str = PLAIN) -> RawSession:
        """A new session (alice's unless `bearer` says otherwise); close it when done, as sessions are counted."""
        session = RawSession(self.http, f"{self.url}{path}", bearer or self.alice)
        await session.open()
        return session

    async def alices(self, path: str = PLAIN) -> RawSession:
        """Alice's session on `path`, opened once and kept."""
        if path not in self.sessions:
            self.sessions[path] = await self.session(path=path)
        return self.sessions[path]

    async def served_and_audited(self, text: str = "still served") -> AuditEvent:
        """A normal call by alice: answered, and its record in both sinks."""
        session = await self.alices()
        answer, request_id = await session.call("echo", {"text": text})
        assert answer["result"]["structuredContent"] == {"result": text}, answer
        event = await in_both_sinks(self.gw, request_id)
        assert (event.subject, event.tool, event.outcome) == (f"user:{ALICE}", "echo", "allowed")
        return event


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def modern_call(
    lab: Lab, name: str, arguments_json: str, bearer: str | None = None
) -> tuple[dict[str, Any], str]:
    """A 2026-07-28 tools/call whose arguments are the JSON text given, as sent (NaN, lone surrogates and all): the
    answer and the request id."""
    meta = json.dumps(MODERN_META)
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
        + json.dumps(name)
        + ',"arguments":'
        + arguments_json
        + ',"_meta":'
        + meta
        + "}}"
    )
    headers = {
        "authorization": f"Bearer {bearer or lab.alice}",
        "accept": ACCEPT,
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    response = await lab.http.post(f"{lab.url}{PLAIN}", content=body.encode(), headers=headers)
    return answer_of(response), response.headers["x-request-id"]


class RawSession:
    """A 2025-11-25 session over raw HTTP: every request body is sent as given, and every answer read as sent."""

    def __init__(self, http: httpx.AsyncClient, url: str, bearer: str) -> None:
        self.http, self.url, self.bearer = http, url, bearer
        self.headers: dict[str, str] = {}
        self._id = 0

    async def open(self) -> None:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        answer, _ = await self.request({"method": "initialize", "params": params})
        assert "result" in answer, answer
        notice = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        response = await self.http.post(self.url, content=notice, headers=self._headers())
        assert response.status_code == 202, response.text

    async def call(self, name: str, arguments: Any) -> tuple[dict[str, Any], str]:
        """A tools/call: the JSON-RPC answer, and the request id the gateway gave it."""
        return await self.request({"method": "tools/call", "params": {"name": name, "arguments": arguments}})

    async def close(self) -> None:
        response = await self.http.delete(self.url, headers=self._headers())
        assert response.status_code in (200, 204), response.text

    async def request(self, message: dict[str, Any], raw: bytes | None = None) -> tuple[dict[str, Any], str]:
        self._id += 1
        body = raw if raw is not None else json.dumps({"jsonrpc": "2.0", "id": self._id, **message}).encode()
        response = await self.http.post(self.url, content=body, headers=self._headers())
        if "mcp-session-id" in response.headers:
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        return answer_of(response), response.headers["x-request-id"]

    def _headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.bearer}",
            "accept": ACCEPT,
            "content-type": "application/json",
            "mcp-protocol-version": "2025-11-25",
            **self.headers,
        }


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a response, whether sent as JSON or as an event stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                if "result" in message or "error" in message:
                    return dict(message)
        raise AssertionError(f"no answer in the stream: {response.text[:300]}")
    body = response.json()
    assert isinstance(body, dict), body
    return body


async def in_both_sinks(gw: SecureGateway, request_id: str) -> AuditEvent:
    """The one record of a request, the same in the database and in audit.jsonl (every field)."""
    [event] = await gw.audit(request_id=request_id)
    lines = [
        json.loads(line)
        for line in (gw.data_dir / "audit.jsonl").read_bytes().decode("ascii").splitlines()  # ASCII, every byte
        if request_id in line
    ]
    assert [line for line in lines if line["request_id"] == request_id] == [event.as_dict()]
    return event


@asynccontextmanager
async def audit_lab(directory: Path, **settings: Any) -> AsyncIterator[Lab]:
    async with serve(backend().http_app(path="/mcp")) as served, httpx.AsyncClient(timeout=60) as http:
        config = directory / "servers.d"
        config.mkdir(parents=True)
        (config / "lab.yaml").write_text(group_doc(url=served.url))
        (config / "identities.yaml").write_text(IDENTITIES)
        async with secure_gateway(config, directory / "data", **settings) as gw:
            yield Lab(gw, served, http, await gw.token(PrincipalKind.USER, ALICE))

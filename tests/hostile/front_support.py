"""A raw HTTP/1.1 client for hostile front-door requests (exact bytes: repeated headers, controls, any Host), and
one gateway with the production security planes shared by a whole test module."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tests.backends import build_lab
from tests.lab_config import CI, PLATFORM, group, header_auth, remote, write_identities
from tests.security_support import SecureGateway, secure_gateway
from tests.support import serve
from virtual_mcp.config.settings import Limits
from virtual_mcp.types import PrincipalKind

MODERN, LEGACY = "2026-07-28", "2025-11-25"
SINGLE, AGGREGATE, OVERRIDABLE = "/mcp-server/lab/tools/server", "/mcp", "/mcp-server/lab/keyed/server"
ALICE, MALLORY = "alice@northwind.example", "mallory@elsewhere.example"


def group_doc(url: str) -> str:
    keyed = remote(
        "keyed",
        url,
        auth_data=header_auth(**{"X-Api-Key": "tfy-secret://t:lab:api-key"}),
        forwardable_headers=["X-Api-Key"],
    )
    return group("lab", remote("tools", url, [f"team:{PLATFORM}", f"virtualaccount:{CI}"]), keyed)


# The hostile corpus sends a few hundred requests as alice in seconds: her rate is not what is tested here.
GENEROUS = Limits(requests_per_second_per_principal=100_000, request_burst_per_principal=100_000)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        if (self.header("content-type") or "").startswith("text/event-stream"):
            for line in self.body.decode().splitlines():
                if line.startswith("data:"):
                    return json.loads(line.removeprefix("data:"))
            raise AssertionError(f"no event in {self.body!r}")
        return json.loads(self.body)


def _parse(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    if dict(headers).get("transfer-encoding") == "chunked":
        body = b""
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2 :]
    else:
        body = rest
    return Answer(int(status_line.split(" ")[1]), headers, body)


async def send_raw(port: int, request: bytes) -> Answer:
    """Send `request` as it is on a new connection (it should ask for `Connection: close`); the whole answer."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        received = bytearray()
        with anyio.fail_after(20):
            try:
                await stream.send(request)
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # the server closed the connection (before reading all of a refused request, perhaps)
    return _parse(bytes(received))


def modern_call(name: str = "echo", text: str = "hi", request_id: Any = 1) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": name, "arguments": {"text": text}, "_meta": meta}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@dataclass
class FrontLab:
    gw: SecureGateway
    port: int
    tokens: dict[str, str]  # alice, mallory, ci
    legacy_session: str = ""  # one of alice's 2025-11-25 sessions on SINGLE
    good_calls: int = field(default=0)

    def request(
        self,
        method: str = "POST",
        path: str = SINGLE,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """A request's bytes: request line, `headers` as given (values may name {alice}, {mallory}, {ci}, {port},
        {session}), Content-Length unless given, `Connection: close`."""
        values = {**self.tokens, "port": str(self.port), "session": self.legacy_session}
        lines = [f"{method} {path} HTTP/1.1".encode()]
        for name, value in headers or []:
            for key, replacement in values.items():
                value = value.replace("{" + key + "}", replacement)
            text = f"{name}: {value}"
            lines.append(text.encode("latin-1") if all(ord(c) < 256 for c in text) else text.encode())
        body = body or b""
        if method in ("POST", "PUT", "PATCH") and not any(n.lower() == "content-length" for n, _ in headers or []):
            lines.append(f"Content-Length: {len(body)}".encode())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def send(self, request: bytes) -> Answer:
        return await send_raw(self.port, request)

    async def good_call(self) -> None:
        """Another caller (the `ci` virtual account) is served normally: a tools/call through the front door."""
        body = json.dumps(modern_call(text="still served")).encode()
        answer = await self.send(self.request(headers=modern_headers("{ci}"), body=body))
        assert answer.status == 200, (answer.status, answer.body)
        assert answer.json()["result"]["structuredContent"] == {"result": "still served"}
        self.good_calls += 1


def modern_headers(bearer: str = "{alice}", name: str = "echo") -> list[tuple[str, str]]:
    return [
        ("Host", "127.0.0.1:{port}"),
        ("Authorization", f"Bearer {bearer}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", name),
    ]


def legacy_headers(bearer: str = "{alice}") -> list[tuple[str, str]]:
    return [
        ("Host", "127.0.0.1:{port}"),
        ("Authorization", f"Bearer {bearer}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", LEGACY),
        ("Mcp-Session-Id", "{session}"),
    ]


@asynccontextmanager
async def front_lab(tmp_path: Path) -> AsyncIterator[FrontLab]:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config)
        secrets = {"tfy-secret://t:lab:api-key": "configured-api-key-1"}
        async with secure_gateway(config, tmp_path / "data", secrets, limits=GENEROUS) as gw:
            tokens = {
                "alice": await gw.token(PrincipalKind.USER, ALICE),
                "mallory": await gw.token(PrincipalKind.USER, MALLORY),
                "ci": await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci"),
            }
            lab = FrontLab(gw, gw.served.port, tokens)
            params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
            headers = [h for h in legacy_headers() if h[0] not in ("Mcp-Session-Id", "MCP-Protocol-Version")]
            opened = await lab.send(lab.request(headers=headers, body=json.dumps(init).encode()))
            assert opened.status == 200, opened.body
            lab.legacy_session = opened.header("mcp-session-id") or ""
            initialized = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
            assert (await lab.send(lab.request(headers=legacy_headers(), body=initialized))).status == 202
            yield lab

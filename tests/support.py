"""Test support: real servers on loopback sockets, no sleeps.

Servers are started on a socket that is already bound and listening, so a client may connect immediately:
its connection waits in the backlog until uvicorn accepts it. Nothing in the tests polls or sleeps.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.lab_config import write_identities
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.demo import bind_loopback
from virtual_mcp.gateway.app import Security, create_app
from virtual_mcp.registry import build_registry

LOCAL_USER = "alice@northwind.example"

REPO = Path(__file__).resolve().parents[1]


def bind(port: int = 0) -> socket.socket:
    """A listening loopback socket (port 0: any free one; SO_REUSEADDR lets a restarted server take its old port)."""
    return bind_loopback(port)


class Served:
    """A running uvicorn server; `stop()` shuts it down (the port is then refused)."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, scope: anyio.CancelScope) -> None:
        self.server = server
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._scope = scope

    def stop(self) -> None:
        self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, stopping as soon as it is told to: uvicorn itself looks every 0.1 s, which a suite that
    starts and stops hundreds of servers pays for hundreds of times."""

    _exit: anyio.Event | None = None
    _should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    async def main_loop(self) -> None:
        self._exit = anyio.Event()
        if self._should_exit:
            self._exit.set()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # on_tick refreshes the Date header when the counter is a multiple of 10
            with anyio.move_on_after(1.0):
                await self._exit.wait()


@asynccontextmanager
async def serve(app: ASGIApp, sock: socket.socket | None = None) -> AsyncIterator[Served]:
    """Serve `app` on a loopback port for the duration of the block."""
    sock = sock or bind()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = _Server(config)
    async with anyio.create_task_group() as tg:
        served = Served(server, sock, tg.cancel_scope)
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield served
        finally:
            # Not force_exit: that would skip the lifespan shutdown, which is part of what the tests check.
            server.should_exit = True


class LegacyOnly:
    """Wraps an MCP app so it behaves like a backend built before 2026-07-28 (SDK 1.x era).

    Such a server answers a request naming an unknown protocol version with HTTP 400 and never learned
    `server/discover`: exactly what the gateway's era negotiation must fall back from.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers", []))
            version = headers.get(b"mcp-protocol-version", b"").decode()
            if version and version.startswith("2026"):
                body = json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Unsupported protocol version"}}
                ).encode()
                await send(
                    {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def write_config(directory: Path, backends: dict[str, str], extra: str = "", group: str = "lab") -> Path:
    """A servers.d with one group whose remote servers point at `backends` (name -> base URL).

    `extra` is appended to the group's `integrations:` list; write its entries indented by two spaces.
    """
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, url in backends.items():
        entries.append(
            f"  - name: {name}\n"
            "    type: integration/mcp-server/remote\n"
            f"    url: {url}/mcp\n"
            "    authorized_subjects: [team:platform-engineering]\n"
        )
    text = f"name: {group}\ntype: provider-account/mcp-server-group\nintegrations:\n" + "".join(entries) + extra
    (directory / f"{group}.yaml").write_text(text)
    write_identities(directory, {"platform-engineering": [LOCAL_USER]})
    return directory


@asynccontextmanager
async def gateway(
    config_dir: Path, security: Security | None = None, secrets: dict[str, str] | None = None, **settings: Any
) -> AsyncIterator[Served]:
    """The gateway on `config_dir`, in local mode as LOCAL_USER unless `security` says otherwise.

    `secrets` maps `tfy-secret://` URIs to values, standing in for the secret store.
    """
    registry = build_registry(load_config_dir(config_dir))
    options: dict[str, Any] = {"local_user": LOCAL_USER, "list_deadline_seconds": 2.0, **settings}
    gateway_settings = GatewaySettings(**options)
    if security is None:
        values = {SecretRef.parse(uri): value for uri, value in (secrets or {}).items()}
        security = Security.local(registry, gateway_settings, values)
    app = create_app(registry, gateway_settings, security)
    async with serve(app) as served:
        yield served

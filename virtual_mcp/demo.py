"""`virtual-mcp demo`: the Northwind example backends and the gateway in one process, with tokens for two users
in different teams and a virtual account, and what each of them sees."""

from __future__ import annotations

import json
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import ConfigError, ConfigIssue
from virtual_mcp.registry import Registry, build_registry
from virtual_mcp.types import PrincipalKind

ROOT = Path(__file__).resolve().parent.parent
IDENTITIES = (
    (PrincipalKind.USER, "alice@northwind.example", "platform-engineering"),
    (PrincipalKind.USER, "bob@northwind.example", "support"),
    (PrincipalKind.VIRTUAL_ACCOUNT, "cargo-copilot-runtime", "virtual account"),
)


def _banner(port: int, tokens: dict[str, str], seen: dict[str, list[str]]) -> str:
    base = f"http://127.0.0.1:{port}"
    alice = tokens["alice@northwind.example"]
    ide = {"mcpServers": {"northwind": {"url": f"{base}/mcp", "headers": {"Authorization": f"Bearer {alice}"}}}}
    who = "\n".join(
        f"  {name} ({team}): {len(seen[name])} tools\n    " + "\n    ".join(seen[name] or ["(none)"])
        for _, name, team in IDENTITIES
    )
    keys = "\n".join(f"  {name:28} {tokens[name]}" for _, name, _ in IDENTITIES)
    return f"""
virtual-mcp demo is running

  everything you may use : {base}/mcp
  one server             : {base}/mcp-server/northwind/tracker/server
  virtual (read-only)    : {base}/mcp-server/northwind/support-readonly/server
  health                 : {base}/healthz

Demo tokens (created for this run; the gateway stores only their hashes):
{keys}

Who sees what on {base}/mcp:
{who}

IDE configuration (Cursor .cursor/mcp.json, VS Code, Claude Code), as alice:
{json.dumps(ide, indent=2)}

Try it from another terminal:
  .venv/bin/python examples/client.py {base}/mcp {alice}

Press Ctrl-C to stop.
"""


def run_demo(port: int, backend_base_port: int, data_dir: Path | None = None) -> int:
    anyio.run(_demo, port, backend_base_port, data_dir or ROOT / ".virtual-mcp" / "demo")
    return 0


async def _demo(port: int, backend_base_port: int, data_dir: Path) -> None:
    import uvicorn

    from virtual_mcp.gateway.assemble import production_app
    from virtual_mcp.gateway.listener import server_config
    from virtual_mcp.vault import Database, TokenStore

    # The example backends live in the repository (examples/), not in the installed package.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from examples.northwind import BACKENDS
    except ImportError:
        raise ConfigError(
            [ConfigIssue("examples/northwind.py", "", "", "run the demo from the repository root")]
        ) from None
    registry = _rebase(build_registry(load_config_dir(ROOT / "examples" / "demo.d")), backend_base_port)
    settings = GatewaySettings(port=port, data_dir=data_dir, limits=registry.limits)
    tokens: dict[str, str] = {}
    async with Database.open(settings.data_dir) as db:
        store = TokenStore(db)
        for kind, name, _ in IDENTITIES:
            await store.revoke_subject(kind, name)  # last run's demo tokens
            _, tokens[name] = await store.create(kind, name, expires_in=7 * 86400, description="virtual-mcp demo")
    apps: list[tuple[Any, int]] = [
        (build().http_app(path="/mcp"), backend_base_port + i) for i, build in enumerate(BACKENDS.values())
    ]
    async with production_app(registry, settings) as gateway:
        apps.append((gateway, port))
        # Bound before serving: connections made from now on wait in the listen backlog, so the banner is true.
        bound = [(app, bind_loopback(p)) for app, p in apps]
        async with anyio.create_task_group() as tg:
            for app, sock in bound:
                config = (
                    server_config(app, settings)
                    if app is gateway
                    else uvicorn.Config(app, log_level="warning", log_config=None)
                )
                server = uvicorn.Server(config)
                tg.start_soon(partial(server.serve, sockets=[sock]))
            seen = {name: await _tools(f"http://127.0.0.1:{port}/mcp", tokens[name]) for _, name, _ in IDENTITIES}
            print(_banner(port, tokens, seen), flush=True)


async def _tools(url: str, token: str) -> list[str]:
    from fastmcp import Client

    async with Client(url, auth=token) as client:
        return sorted(t.name for t in await client.list_tools())


def _rebase(registry: Registry, base_port: int) -> Registry:
    """The demo config names ports 9101..9103; honour --backend-base-port by rewriting them."""
    if base_port == 9101:
        return registry
    from dataclasses import replace
    from types import MappingProxyType

    remotes = {
        ref: replace(entry, url=entry.url.replace(f":{9101 + i}/", f":{base_port + i}/"))
        for i, (ref, entry) in enumerate(sorted(registry.remotes.items(), key=lambda kv: kv[1].url))
    }
    return replace(registry, remotes=MappingProxyType(remotes))


def bind_loopback(port: int) -> socket.socket:
    """A listening loopback socket. Created as TCP by name (IPPROTO_TCP, not 0): asyncio and uvloop set TCP_NODELAY
    on accepted connections only for such a socket, and without it a response written in two parts waits ~40 ms for
    the client's delayed acknowledgement (Nagle)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock

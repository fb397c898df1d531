"""`virtual-mcp demo`: the Northwind example backends and the gateway in one process, ready for a client."""

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
from virtual_mcp.registry import build_registry

DEMO_USER = "alice@northwind.example"
ROOT = Path(__file__).resolve().parent.parent


def _banner(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    ide = {"mcpServers": {"northwind": {"url": f"{base}/mcp"}}}
    return f"""
virtual-mcp demo is running (local mode: every request is {DEMO_USER}, loopback only)

  everything you may use : {base}/mcp
  one server             : {base}/mcp-server/northwind/tracker/server
  virtual (read-only)    : {base}/mcp-server/northwind/support-readonly/server
  health                 : {base}/healthz

IDE configuration (Cursor .cursor/mcp.json, VS Code, Claude Code):
{json.dumps(ide, indent=2)}

Try it from another terminal:
  .venv/bin/python examples/client.py {base}/mcp

Press Ctrl-C to stop.
"""


def run_demo(port: int, backend_base_port: int) -> int:
    anyio.run(_demo, port, backend_base_port)
    return 0


async def _demo(port: int, backend_base_port: int) -> None:
    import uvicorn

    from virtual_mcp.gateway.app import create_app

    # The example backends live in the repository (examples/), not in the installed package.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from examples.northwind import BACKENDS
    except ImportError:
        raise ConfigError(
            [ConfigIssue("examples/northwind.py", "", "", "run the demo from the repository root")]
        ) from None
    config_dir = ROOT / "examples" / "demo.d"
    registry = build_registry(load_config_dir(config_dir))
    apps: list[tuple[Any, int]] = [
        (build().http_app(path="/mcp"), backend_base_port + i) for i, build in enumerate(BACKENDS.values())
    ]
    settings = GatewaySettings(port=port, local_user=DEMO_USER)
    apps.append((create_app(_rebase(registry, backend_base_port), settings), port))
    # Bound before serving: connections made from now on wait in the listen backlog, so the banner is true.
    bound = [(app, bind_loopback(p)) for app, p in apps]
    async with anyio.create_task_group() as tg:
        for app, sock in bound:
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
            tg.start_soon(partial(server.serve, sockets=[sock]))
        print(_banner(port), flush=True)


def _rebase(registry: Any, base_port: int) -> Any:
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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock

"""The virtual-mcp side of a benchmark run: its configuration, its credentials (as an operator creates them) and
its command line."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.procs import Child

LOCAL_USER = "alice@northwind.example"
GROUP, SERVER = "bench", "echo"
BACKEND_SECRET_REF = "tfy-secret://bench:echo:token"  # noqa: S105 - a reference, not a secret


def write_gateway_config(directory: Path, backend_url: str) -> Path:
    """One group with the echo server behind a static secret header (the gateway resolves it from its vault)."""
    servers = directory / "servers.d"
    servers.mkdir(parents=True)
    (servers / f"{GROUP}.yaml").write_text(
        f"name: {GROUP}\n"
        "type: provider-account/mcp-server-group\n"
        "integrations:\n"
        f"  - name: {SERVER}\n"
        "    type: integration/mcp-server/remote\n"
        f"    url: {backend_url}\n"
        "    authorized_subjects: [team:bench]\n"
        "    auth_data:\n"
        "      type: header\n"
        f'      headers: {{Authorization: "Bearer {BACKEND_SECRET_REF}"}}\n'
    )
    (servers / "identities.yaml").write_text(
        f"type: identities\nteams:\n  - name: bench\n    members: [{LOCAL_USER}]\n"
    )
    return servers


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("virtual-mcp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "virtual_mcp.cli"]


def gateway_credentials(data_dir: Path) -> str:
    """Store the backend's secret in the gateway's vault and create a gateway token for the bench user, as an
    operator would; returns the token (sent by every benchmark request, as a client would)."""
    base = [*cli_command(), "--log-level", "warning"]
    reference = BACKEND_SECRET_REF.removeprefix("tfy-secret://")
    subprocess.run(
        [*base, "secrets", "set", reference, "--data-dir", str(data_dir)],
        input=b"bench-backend-secret",
        check=True,
        capture_output=True,
    )
    created = subprocess.run(
        [*base, "token", "create", "--user", LOCAL_USER, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return created.stdout.strip()


def gateway_command(config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        *cli_command(),
        "--log-level",
        "warning",
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def wait_until(check: Callable[[], bool], child: Child, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.fail(f"exited while waiting until {what}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise child.fail(f"not {what} after {timeout:.0f} s")

"""The virtual-mcp side of a benchmark run: its configuration, its credentials (as an operator creates them) and
its command line."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import Child

LOCAL_USER = "alice@northwind.example"
GROUP, SERVER = "bench", "echo"
BACKEND_SECRET_REF = "tfy-secret://bench:echo:token"  # noqa: S105 - a reference, not a secret


def write_gateway_config(directory: Path, backend_url: str, limits: bool = True) -> Path:
    """One group with the echo server behind a static secret header (the gateway resolves it from its vault).
    `limits`: lift the per-principal limits (False for a baseline commit from before they existed)."""
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
    if limits:
        (servers / "gateway.yaml").write_text(BENCH_LIMITS)
    return servers


# The benchmark drives one principal as hard as the gateway goes (and opens 1,000 sessions as that principal), so
# the per-principal limits that keep one caller from crowding out the others are lifted for it.
BENCH_LIMITS = (
    "type: gateway\n"
    "limits:\n"
    "  sessions_per_principal: 10000\n"
    "  requests_per_second_per_principal: 1000000\n"
    "  request_burst_per_principal: 1000000\n"
)


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("virtual-mcp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "virtual_mcp.cli"]


@dataclass(frozen=True)
class Checkout:
    """Which code a gateway runs: this checkout (the installed `virtual-mcp`), or another one (a baseline commit's
    worktree), run as `python -m virtual_mcp.cli` from its own directory so its own modules are imported."""

    root: Path | None = None

    def command(self) -> list[str]:
        return cli_command() if self.root is None else [sys.executable, "-m", "virtual_mcp.cli"]


def store_secret(data_dir: Path, reference: str, value: str, code: Checkout = Checkout()) -> None:
    """`virtual-mcp secrets set`, as an operator stores a secret the configuration references."""
    subprocess.run(
        [
            *code.command(),
            "--log-level",
            "warning",
            "secrets",
            "set",
            reference.removeprefix("tfy-secret://"),
            "--data-dir",
            str(data_dir),
        ],
        input=value.encode(),
        check=True,
        capture_output=True,
        cwd=code.root,
    )


def create_token(data_dir: Path, code: Checkout = Checkout()) -> str:
    """`virtual-mcp token create` for the bench user; the token every benchmark request sends, as a client would."""
    created = subprocess.run(
        [
            *code.command(),
            "--log-level",
            "warning",
            "token",
            "create",
            "--user",
            LOCAL_USER,
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=code.root,
    )
    return created.stdout.strip()


def gateway_credentials(data_dir: Path, code: Checkout = Checkout()) -> str:
    """Store the backend's secret in the gateway's vault and create a gateway token for the bench user."""
    store_secret(data_dir, BACKEND_SECRET_REF, "bench-backend-secret", code)
    return create_token(data_dir, code)


def servers_config(directory: Path, group: str, prefix: str, urls: list[str]) -> Path:
    """A servers.d with one group of plain remote servers (`{prefix}{i}`, one per URL) for the bench team."""
    servers = directory / "servers.d"
    servers.mkdir(parents=True)
    lines = [f"name: {group}", "type: provider-account/mcp-server-group", "integrations:"]
    for i, url in enumerate(urls):
        lines += [f"  - name: {prefix}{i}", "    type: integration/mcp-server/remote", f"    url: {url}"]
        lines.append("    authorized_subjects: [team:bench]")
    (servers / f"{group}.yaml").write_text("\n".join(lines) + "\n")
    (servers / "identities.yaml").write_text(
        f"type: identities\nteams:\n  - name: bench\n    members: [{LOCAL_USER}]\n"
    )
    (servers / "gateway.yaml").write_text(BENCH_LIMITS)
    return servers


def gateway_command(config: Path, data_dir: Path, port: int, code: Checkout = Checkout()) -> list[str]:
    return [
        *code.command(),
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

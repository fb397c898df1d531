"""Real gateway and CLI processes, as an operator runs them: `serve` in the background, CLI commands beside it.

Both run this checkout's code (`python -m ...` from the repository root), not whatever `virtual-mcp` script is on
PATH. A `serve` child prints READY once it listens (tests/serve_child.py), so nothing polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.support import REPO

SERVE_CHILD = ("tests.serve_child",)


@asynccontextmanager
async def gateway_process(
    args: Sequence[str], child: Sequence[str] = SERVE_CHILD, env: Mapping[str, str] | None = None
) -> AsyncIterator[Process]:
    """`virtual-mcp serve ARGS` (through `python -m CHILD...`, with `env` added to this process's environment)
    until the block ends; then a graceful stop (SIGTERM, as a service manager sends), which drains what the gateway
    has queued."""
    command = [sys.executable, "-m", *child, "serve", *args]
    environment = {**os.environ, **env} if env is not None else None
    async with await anyio.open_process(command, cwd=REPO, env=environment) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(60):
                async for line in TextReceiveStream(process.stdout):
                    if "READY" in line:
                        break
                else:  # it exited before listening (a port taken, a refused config): never a stranger's server
                    assert process.stderr is not None
                    why = b"".join([chunk async for chunk in process.stderr]).decode(errors="replace")
                    raise AssertionError(f"serve exited ({await process.wait()}) before it listened:\n{why[-4000:]}")
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()


async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """One `virtual-mcp ARGS` process: its exit code, standard output and standard error."""
    done = await anyio.run_process(
        [sys.executable, "-m", "virtual_mcp.cli", *args], input=stdin.encode(), cwd=REPO, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def read_elsewhere(path: Path) -> bytes:
    """A file's bytes, read by another process: closing a descriptor of a database file that this process has open
    in SQLite would drop the process's locks on it (see virtual_mcp/vault/db.py)."""
    return subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout  # noqa: S603, S607


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def tools_list(url: str, bearer: str, path: str = "/mcp") -> httpx.Response:
    """One sessionless 2026-07-28 tools/list with this credential, as a client sends it (no backend call needed for
    an answer: a refused credential is a 401, a revoked one too)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}
    headers = {
        "authorization": f"Bearer {bearer}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    async with httpx.AsyncClient() as http:
        return await http.post(f"{url}{path}", json=body, headers=headers)

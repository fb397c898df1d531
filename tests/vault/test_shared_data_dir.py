"""The CLI beside a running `serve` on one data directory, as an operator uses them: nothing lost, nothing corrupted.

Real processes: a `serve` child, and CLI commands (token create/revoke, revoke --user, secrets set, audit,
connections, keys rotate, token list) run against its data directory while calls flow through it. Then: every
revocation is seen on the next request (and after a restart), tokens created meanwhile work, the database passes
`PRAGMA integrity_check`, and every call is in both audit sinks.
"""

from __future__ import annotations

import json
import sqlite3
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.backends import build_lab
from tests.ports import free_ports
from tests.processes import cli, gateway_process, tools_list
from tests.sensitive import mark
from tests.store_mode import refused_after_revocation
from tests.support import LOCAL_USER, serve, write_config
from virtual_mcp.vault.db import DB_FILE_NAME

AUDITED = "    audit: {arguments: true}\n"
UNLIMITED = (
    "type: gateway\nlimits:\n  requests_per_second_per_principal: 1000000\n  request_burst_per_principal: 1000000\n"
)


async def token(data: Path, user: str) -> str:
    code, out, err = await cli("token", "create", "--user", user, "--data-dir", str(data))
    assert code == 0, err
    mark(out.strip())
    return out.strip()


async def status(url: str, bearer: str) -> int:
    return (await tools_list(url, bearer)).status_code


@pytest.mark.embedded_only("processes sharing one SQLite file (tests/gateway/test_shared_state.py: on PostgreSQL)")
async def test_cli_commands_beside_a_running_serve_lose_nothing(tmp_path: Path) -> None:
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_config(tmp_path / "servers.d", {"echo": backend.url})
        text = (config / "lab.yaml").read_text()
        (config / "lab.yaml").write_text(text + AUDITED)
        # Alice calls as fast as the gateway answers for the whole test: her rate is not what is tested here.
        (config / "gateway.yaml").write_text(UNLIMITED)
        alice = await token(data, LOCAL_USER)
        carol = await token(data, "carol@northwind.example")
        dave = await token(data, "dave@northwind.example")
        args = ["--config", str(config), "--port", str(port), "--data-dir", str(data)]
        calls = 0
        async with gateway_process(args):
            created: list[str] = []

            async def call_until(done: anyio.Event, at_least: int) -> None:
                nonlocal calls
                transport = StreamableHttpTransport(f"{url}/mcp-server/lab/echo/server", auth=alice)
                async with Client(transport) as client:
                    while not done.is_set() or calls < at_least:
                        result = await client.call_tool("echo", {"text": f"call {calls}"})
                        assert result.data == f"call {calls}"
                        calls += 1

            for round_ in range(3):
                done = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call_until, done, 5 * (round_ + 1))
                    created.append(await token(data, f"bob{round_}@northwind.example"))
                    secret = f"secret value {round_}"
                    mark(secret)
                    code, _, err = await cli("secrets", "set", f"t:g:k{round_}", "--data-dir", str(data), stdin=secret)
                    assert code == 0, err
                    code, _, err = await cli("audit", "--limit", "5", "--data-dir", str(data))
                    assert code == 0, err
                    code, _, err = await cli("connections", "list", "--user", LOCAL_USER, "--data-dir", str(data))
                    assert code == 0, err
                    code, _, err = await cli("token", "list", "--data-dir", str(data))
                    assert code == 0, err
                    if round_ == 1:
                        code, _, err = await cli("keys", "rotate", "--data-dir", str(data))
                        assert code == 0, err
                    done.set()
            # Revocations by other processes are seen on the very next request.
            assert await status(url, carol) == 200
            code, _, err = await cli("token", "revoke", carol.split("_")[1], "--data-dir", str(data))
            assert code == 0, err
            await refused_after_revocation(partial(status, url, carol))
            assert await status(url, dave) == 200
            code, _, err = await cli("revoke", "--user", "dave@northwind.example", "--data-dir", str(data))
            assert code == 0, err
            await refused_after_revocation(partial(status, url, dave))
            for bob in created:  # tokens created beside the running gateway work
                assert await status(url, bob) == 200
            assert await status(url, alice) == 200
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{url}/readyz")
            assert ready.status_code == 200, ready.text
        with sqlite3.connect(data / DB_FILE_NAME) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            rows = raw.execute("SELECT request_id FROM audit WHERE method = 'tools/call'").fetchall()
        lines = [json.loads(line) for line in (data / "audit.jsonl").read_text().splitlines()]
        assert len(rows) == calls
        assert sorted(r[0] for r in rows) == sorted(e["request_id"] for e in lines if e["method"] == "tools/call")
        async with gateway_process(args):  # and after a restart, what was revoked stays revoked
            assert await status(url, carol) == 401
            assert await status(url, dave) == 401
            assert await status(url, created[0]) == 200


@pytest.mark.embedded_only("the SQLite file replaced or its lock lost under a running gateway")
async def test_readiness_fails_once_the_store_cannot_be_trusted(tmp_path: Path) -> None:
    """The files a running gateway writes to removed under it (what a CLI process did when it took itself for the
    database's last user): /readyz says so, so a load balancer stops sending it requests."""
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_config(tmp_path / "servers.d", {"echo": backend.url})
        args = ["--config", str(config), "--port", str(port), "--data-dir", str(data)]
        async with gateway_process(args), httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/readyz")).status_code == 200
            (data / f"{DB_FILE_NAME}-wal").unlink()
            (data / f"{DB_FILE_NAME}-shm").unlink()
            ready = await http.get(f"{url}/readyz")
            assert ready.status_code == 503
            assert "gateway.db-wal was removed" in ready.json()["checks"]["database"]

"""`virtual-mcp demo` and `examples/client.py`, as a newcomer runs them, in real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import anyio
from anyio.streams.text import TextReceiveStream

from tests.ports import free_ports
from tests.support import REPO

BIN = Path(sys.executable).parent


async def test_demo_serves_the_northwind_example(tmp_path: Path) -> None:
    gateway_port, base = free_ports(1)[0], 0  # base: found below
    # Three consecutive free ports for the backends.
    for candidate in range(20000 + os.getpid() % 20000, 60000, 7):
        try:
            probes = [socket.create_server(("127.0.0.1", candidate + i)) for i in range(3)]
        except OSError:
            continue
        for p in probes:
            p.close()
        base = candidate
        break
    command = [str(BIN / "virtual-mcp"), "demo", "--port", str(gateway_port), "--backend-base-port", str(base)]
    command += ["--data-dir", str(tmp_path / "data")]
    async with await anyio.open_process(command, cwd=REPO) as demo:
        try:
            assert demo.stdout is not None
            banner = ""
            with anyio.fail_after(30):
                async for chunk in TextReceiveStream(demo.stdout):
                    banner += chunk
                    if "Press Ctrl-C to stop." in banner:
                        break
            assert f"http://127.0.0.1:{gateway_port}/mcp" in banner
            assert '"mcpServers"' in banner and "examples/client.py" in banner
            # Two users in different teams and a virtual account see different tools.
            assert "alice@northwind.example (platform-engineering): 10 tools" in banner
            assert "bob@northwind.example (support): 4 tools" in banner
            assert "cargo-copilot-runtime (virtual account): 3 tools" in banner
            command = banner.split("Try it from another terminal:")[1].split("\n")[1].split()
            url, token = command[-2], command[-1]
            assert url == f"http://127.0.0.1:{gateway_port}/mcp" and token.startswith("vmcp_")
            with anyio.fail_after(60):
                run = await anyio.run_process([sys.executable, "examples/client.py", url, token], cwd=REPO, check=False)
            out = run.stdout.decode()
            assert run.returncode == 0, run.stderr.decode()[-2000:]
            assert "northwind__tracker__delete_repo  <- northwind/tracker/delete_repo" in out
            assert "northwind__tracker__list_repos -> ['cargo-api', 'fleet-ui']" in out
            # Without a token the gateway refuses.
            with anyio.fail_after(60):
                refused = await anyio.run_process([sys.executable, "examples/client.py", url], cwd=REPO, check=False)
            assert refused.returncode != 0
        finally:
            demo.send_signal(signal.SIGINT)
            with anyio.fail_after(15):
                await demo.wait()


async def test_connections_accepted_on_a_loopback_listener_do_not_wait_for_nagle() -> None:
    """Without TCP_NODELAY an answer written in two parts (head, then body) waits for the client's delayed ACK."""
    import asyncio
    import socket

    from virtual_mcp.demo import bind_loopback

    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listener = bind_loopback(0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        with anyio.fail_after(5):
            assert await accepted == 1
        writer.close()
    finally:
        server.close()

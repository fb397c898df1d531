"""The MCP reference server, `@modelcontextprotocol/server-everything` (npm, pinned in everything/package.json), in a
child process on a loopback port: what a team would put behind the gateway first.

`everything_server()` starts its streamable HTTP transport and yields its base URL once it says it is listening
(read from its stderr under a deadline: no polling); its stderr is kept for a failing test's report.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.text import TextReceiveStream

from tests.node_packages import NodePackage, stop_process_group
from tests.ports import free_ports

PACKAGE = NodePackage(Path(__file__).parent / "everything", "server-everything")
ENTRY = PACKAGE.directory / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
READY_DEADLINE = 30.0


@dataclass
class Everything:
    url: str  # the MCP endpoint
    stderr: list[str] = field(default_factory=list)


@asynccontextmanager
async def everything_server() -> AsyncIterator[Everything]:
    node = await anyio.to_thread.run_sync(PACKAGE.ensure_installed)
    [port] = free_ports(1)  # it takes its port from PORT and reports the configured number, not the bound one
    process = await anyio.open_process(
        [str(node), str(ENTRY), "streamableHttp"],
        cwd=PACKAGE.directory,
        env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # a line per request
        start_new_session=True,
    )
    server = Everything(f"http://127.0.0.1:{port}/mcp")
    assert process.stderr is not None
    try:
        lines = BufferedByteReceiveStream(process.stderr)
        try:
            with anyio.fail_after(READY_DEADLINE):
                while True:
                    line = (await lines.receive_until(b"\n", 65536)).decode(errors="replace")
                    server.stderr.append(line)
                    if "listening on port" in line:
                        break
        except (TimeoutError, anyio.IncompleteRead, anyio.EndOfStream) as exc:
            log = "\n".join(server.stderr)
            raise RuntimeError(f"server-everything did not get ready ({exc!r}); its stderr:\n{log}") from exc
        async with anyio.create_task_group() as tg:

            async def drain() -> None:  # never let a full pipe stall it
                async for text in TextReceiveStream(lines):  # type: ignore[arg-type]
                    server.stderr.append(text)

            tg.start_soon(drain)
            try:
                yield server
            finally:
                tg.cancel_scope.cancel()
    finally:
        await stop_process_group(process, 5.0)

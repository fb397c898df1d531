"""`virtual-mcp serve` that prints READY on standard output once it listens: `python -m tests.serve_child serve ...`.

The test waits on that line rather than polling the port.
"""

from __future__ import annotations

import sys
from typing import Any

from virtual_mcp.cli import main


def announce_ready() -> None:
    import uvicorn

    startup = uvicorn.Server.startup

    async def startup_then_announce(self: uvicorn.Server, sockets: Any = None) -> None:
        await startup(self, sockets)
        print("READY", flush=True)

    uvicorn.Server.startup = startup_then_announce  # type: ignore[method-assign]


if __name__ == "__main__":
    announce_ready()
    sys.exit(main(sys.argv[1:]))

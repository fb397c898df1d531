"""The lab backend (tests/backends.py) as a stdio MCP server: `python -m tests.stdio_backend`, run by the gateway
for `transport: stdio` tests. It adds tools to read its environment, write to stderr, write garbage and exit."""

from __future__ import annotations

import os
import sys

from tests.backends import build_lab

lab = build_lab(name="stdio-lab")
_memory: dict[str, str] = {}  # state the process keeps across calls, as many stdio servers do


@lab.tool
def remember(value: str) -> str:
    """Keep `value` in this process."""
    _memory["value"] = value
    return "remembered"


@lab.tool
def recall() -> str:
    """What this process was last told to remember ("" if nothing)."""
    return _memory.get("value", "")


@lab.tool
def env(name: str) -> str:
    """The value of an environment variable ("" if unset)."""
    return os.environ.get(name, "")


@lab.tool
def pid() -> int:
    """This process's id."""
    return os.getpid()


@lab.tool
def complain(text: str, times: int = 1) -> str:
    """Write `text` to stderr `times` times."""
    for _ in range(times):
        print(text, file=sys.stderr, flush=True)
    return "complained"


@lab.tool
def garble() -> str:
    """Write a line that is not JSON-RPC to its stdout (what a stray print() in a stdio server does)."""
    os.write(1, b"this is not json\n")
    return "garbled"


@lab.tool
def crash(status: int = 3) -> str:
    """Exit at once."""
    os._exit(status)


if __name__ == "__main__":
    lab.run(transport="stdio", show_banner=False)

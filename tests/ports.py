"""Loopback ports for processes that must be told theirs before they start (a `serve` child, a callback URL in a
config, PostgreSQL and Redis).

They come from below the kernel's ephemeral range (32768 and up), one block per xdist worker, handed out in turn (a
port comes round again only after the whole block). A port the kernel picked for a `bind(0)` and released at once
could be picked again straight away for another server's `bind(0)` or by another worker, and the child told it
would find it taken.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

_PORT_BLOCK = 1500
_PORT_BASE = 20000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
_block = int(_worker) % 8 if _worker.isdigit() else 0
_next_ports = itertools.chain.from_iterable(
    itertools.repeat(range(_PORT_BASE + _block * _PORT_BLOCK, _PORT_BASE + (_block + 1) * _PORT_BLOCK))
)
_skip = random.Random(os.getpid()).randrange(_PORT_BLOCK)
for _ in range(_skip):
    next(_next_ports)


def free_ports(n: int) -> list[int]:
    """`n` loopback ports nothing listens on now, none handed out before by this process (see above)."""
    ports: list[int] = []
    for port in _next_ports:
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        ports.append(port)
        if len(ports) == n:
            return ports
    raise AssertionError("unreachable: the port cycle is endless")

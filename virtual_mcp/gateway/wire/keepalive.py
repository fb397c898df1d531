"""Keepalive comments on long event-stream answers, written for every stream from one task.

An answer that outlasts the interval gets a comment line (`: ping ...`) every `interval` seconds, so proxies and
clients do not take a quiet stream for a dead one. One task looks at the streams being answered once a second and
pings those due, each from a task of its own (a slow client delays only its own ping); a call that ends sooner
costs a dictionary entry instead of a task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import anyio

logger = logging.getLogger(__name__)

INTERVAL = 15.0  # sse-starlette's default, which the SDK's event streams use
TICK = 1.0  # how often due streams are looked for


class Pingable(Protocol):
    async def ping(self) -> None: ...


class Keepalive:
    def __init__(self, interval: float | None = None, tick: float | None = None) -> None:
        self._interval = INTERVAL if interval is None else interval
        self._tick = TICK if tick is None else tick
        self._due: dict[Pingable, float] = {}
        self._pinging: set[Pingable] = set()  # a ping under way (a slow client): the next waits for it

    @contextmanager
    def watching(self, stream: Pingable) -> Iterator[None]:
        """Ping `stream` every interval while the block runs."""
        self.watch(stream)
        try:
            yield
        finally:
            self.forget(stream)

    def watch(self, stream: Pingable) -> None:
        """Ping `stream` every interval from now until `forget`."""
        self._due[stream] = anyio.current_time() + self._interval

    def forget(self, stream: Pingable) -> None:
        self._due.pop(stream, None)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.sleep(self._tick)
                now = anyio.current_time()
                for stream, due in list(self._due.items()):
                    if due <= now and stream in self._due and stream not in self._pinging:
                        self._due[stream] = now + self._interval
                        self._pinging.add(stream)
                        tg.start_soon(self._ping, stream)

    async def _ping(self, stream: Pingable) -> None:
        try:
            await stream.ping()
        except Exception:  # a keepalive that cannot be written is not worth more than a line in the log
            logger.debug("keepalive comment not written", exc_info=True)
        finally:
            self._pinging.discard(stream)

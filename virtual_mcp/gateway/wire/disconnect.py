"""Cancelling a request when its client goes away, without a task per request.

Noticing a disconnect means waiting on the ASGI `receive` while the request runs, which takes a task. Most requests
finish in a few milliseconds, and a task per request (created, cancelled, collected) costs more than the rest of the
wire; so the watcher starts only once the request has run for `WATCH_AFTER` seconds. A client that leaves sooner is
noticed then (the server has queued its disconnect), which is soon enough for what cancellation is for: not leaving
long work running for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from starlette.types import Receive

WATCH_AFTER = 0.05


async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


@contextmanager
def cancelled_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> Iterator[None]:
    """Cancel `scope` if the client disconnects while the block runs (noticed from `WATCH_AFTER` seconds on)."""
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    def start() -> None:
        nonlocal watcher
        watcher = loop.create_task(_watch(receive, scope))

    timer = loop.call_later(WATCH_AFTER, start)
    try:
        yield
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()

"""Keepalive comments for long answers, all streams from one task: who is pinged, when, and that a stream that
cannot be written to costs nothing but its own ping."""

from __future__ import annotations

import anyio

from virtual_mcp.gateway.wire.keepalive import Keepalive


class Stream:
    def __init__(self, fail: bool = False) -> None:
        self.pings = 0
        self.pinged = anyio.Event()
        self.fail = fail

    async def ping(self) -> None:
        self.pings += 1
        self.pinged.set()
        if self.fail:
            raise OSError("the client went away")


async def test_a_watched_stream_is_pinged_each_interval_and_not_after() -> None:
    keepalive = Keepalive(interval=0.05, tick=0.01)
    quick, slow, broken = Stream(), Stream(), Stream(fail=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(keepalive.run)
        with keepalive.watching(quick):
            pass  # ended before its first interval
        with keepalive.watching(slow), keepalive.watching(broken):
            with anyio.fail_after(5):
                await broken.pinged.wait()  # its ping fails; the loop goes on
                while slow.pings < 3:
                    slow.pinged = anyio.Event()
                    await slow.pinged.wait()
        after = slow.pings
        marker = Stream()
        with keepalive.watching(marker), anyio.fail_after(5):
            await marker.pinged.wait()  # a whole interval later: the ended streams were not pinged
        tg.cancel_scope.cancel()
    assert quick.pings == 0
    assert slow.pings == after
    assert broken.pings >= 1


async def test_pings_are_spaced_by_the_interval() -> None:
    interval = 0.05
    keepalive = Keepalive(interval=interval, tick=0.005)
    stream = Stream()
    times: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(keepalive.run)
        started = anyio.current_time()
        with keepalive.watching(stream), anyio.fail_after(5):
            while len(times) < 3:
                stream.pinged = anyio.Event()
                await stream.pinged.wait()
                times.append(anyio.current_time())
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip([started, *times], times, strict=False)]
    assert all(gap >= interval for gap in gaps), gaps

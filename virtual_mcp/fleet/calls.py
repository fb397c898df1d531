"""Asking the one replica that holds something (a call waiting for its caller's answer) to go on with it, and waiting
for what it says: a small request/reply between replicas over Redis pub/sub (channel `vmcp:calls`).

A call is addressed to a replica by its origin (a random id per process, named in what it handed out). While the
replica works on it, it may send notes (a held call's progress and log messages, for the caller's request), and it
says it is alive every few seconds: a caller that hears nothing for `patience` seconds takes the replica for gone.
If the caller's request is cancelled, the replica is told to abandon the work. Every message carries what callers
and backends said, so each is sealed (fleet/sealing.py): Redis never holds it readable, and nothing without the
fleet's key is taken for a message.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import Redis

from virtual_mcp.fleet.channel import Channel
from virtual_mcp.fleet.sealing import FRESH, Sealer
from virtual_mcp.fleet.status import FleetStatus

logger = logging.getLogger(__name__)

CHANNEL = "vmcp:calls"
_ALIVE_EVERY = 5.0
_PATIENCE = 3 * _ALIVE_EVERY
_FIRST_WORD = 5.0  # seconds for the addressed replica to say it has the call

_KINDS = ("call", "note", "alive", "done", "abandon")

Note = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Note], Awaitable[dict[str, Any]]]


class ReplicaGone(Exception):
    """The replica addressed does not listen, or went silent while working on the call."""


class ReplicaCalls:
    def __init__(self, redis: Redis, status: FleetStatus, sealer: Sealer, patience: float = _PATIENCE) -> None:
        self._channel = Channel(redis, status, "sessions", CHANNEL)
        self._sealer = sealer
        self._patience = patience
        self.origin = secrets.token_hex(8)
        self._handler: Handler | None = None
        self._waiting: dict[str, MemoryObjectSendStream[dict[str, Any]]] = {}
        self._serving: dict[str, anyio.CancelScope] = {}
        self._heard: dict[str, float] = {}  # the calls heard in the last `FRESH` seconds: each is served once
        self._tg: TaskGroup | None = None

    def serve(self, handler: Handler) -> None:
        """What this replica does with a call addressed to it."""
        self._handler = handler

    async def call(self, to: str, body: Mapping[str, Any], on_note: Note) -> dict[str, Any]:
        """Ask replica `to`; its answer. ReplicaGone if it does not listen or goes silent."""
        nonce = secrets.token_hex(12)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self._waiting[nonce] = send
        done = False
        try:
            # (This replica's own subscription hears it too: another listener is needed.)
            if (await self._publish({"k": "call", "to": to, "n": nonce, "b": dict(body)})) < 2:
                raise ReplicaGone("the replica holding it does not listen")
            patience = min(_FIRST_WORD, self._patience)
            while True:
                try:
                    with anyio.fail_after(patience):
                        message = await receive.receive()
                except TimeoutError:
                    raise ReplicaGone(f"the replica holding it said nothing for {patience:g} s") from None
                patience = self._patience
                if message["k"] == "note":
                    await on_note(message["b"])
                elif message["k"] == "done":
                    done = True
                    return dict(message["b"])
        finally:
            if not done:  # given up (cancelled, silent, failed): the holder stops too, never finishing unseen
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._publish({"k": "abandon", "to": to, "n": nonce, "b": {}})
            del self._waiting[nonce]
            send.close()
            receive.close()

    async def run(self, subscribed: Callable[[], None] | None = None) -> None:
        """Receive until cancelled; the calls addressed here are served in tasks of their own."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self._channel.run(self._receive, subscribed=subscribed)

    def _receive(self, raw: bytes | str) -> None:
        message = self._decode(raw)
        if message is None or message["to"] != self.origin:
            return
        kind, nonce = message["k"], message["n"]
        if kind == "call":
            if self._tg is not None and self._handler is not None and self._first_hearing(nonce):
                self._serving[nonce] = anyio.CancelScope()
                self._tg.start_soon(self._serve_one, self._handler, message)
        elif kind == "abandon":
            scope = self._serving.get(nonce)
            if scope is not None:
                scope.cancel()
        else:
            waiting = self._waiting.get(nonce)
            if waiting is not None:
                waiting.send_nowait(message)

    def _first_hearing(self, nonce: str) -> bool:
        """A call heard twice (replayed on the channel) is served once."""
        now = time.monotonic()
        if len(self._heard) > 10_000:
            self._heard = {n: until for n, until in self._heard.items() if until > now}
        if self._heard.get(nonce, 0) > now:
            return False
        self._heard[nonce] = now + 2 * FRESH
        return True

    async def _serve_one(self, handler: Handler, message: dict[str, Any]) -> None:
        asker, nonce = message["from"], message["n"]

        async def note(body: dict[str, Any]) -> None:
            await self._publish({"k": "note", "to": asker, "n": nonce, "b": body})

        async def alive() -> None:
            while True:
                await self._publish({"k": "alive", "to": asker, "n": nonce, "b": {}})
                await anyio.sleep(_ALIVE_EVERY)

        scope = self._serving[nonce]
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(alive)
                    try:
                        answer = await handler(message["b"], note)
                    except Exception:  # the top of a task: the asker is told, the details stay in this log
                        logger.exception("serving another replica's call")
                        answer = {"error": {"code": -32603, "message": "Internal error"}}
                    tg.cancel_scope.cancel()
                await self._publish({"k": "done", "to": asker, "n": nonce, "b": answer})
        finally:
            self._serving.pop(nonce, None)

    async def _publish(self, message: dict[str, Any]) -> int:
        """How many listeners heard it (0 if it could not be sent)."""
        stamped = {**message, "from": self.origin, "at": time.time()}
        sealed = self._sealer.seal(json.dumps(stamped, separators=(",", ":")).encode())
        return await self._channel.publish(sealed) or 0

    def _decode(self, raw: bytes | str) -> dict[str, Any] | None:
        opened = self._sealer.open(raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw)
        if opened is None:
            return None
        try:
            message = json.loads(opened)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("k") not in _KINDS:
            return None
        at = message.get("at")
        if not isinstance(at, int | float) or abs(time.time() - at) > FRESH:
            return None
        if not all(isinstance(message.get(f), str) for f in ("to", "n", "from")) or not isinstance(
            message.get("b"), dict
        ):
            return None
        return message

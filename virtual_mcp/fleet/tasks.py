"""2025-11-25 task routes over the fleet (Redis): where a task id the gateway gave a caller leads, so that its
`tasks/get`, `tasks/result` and `tasks/cancel` are served by any replica (gateway/service/tasks.py).

`vmcp:task:<digest>` (SHA-256 of the gateway's task id; the id itself is never stored) holds the route sealed
(fleet/sealing.py): whose task, the endpoint and tool, the server, and the backend's own id. It expires with the task.
Without Redis, a replica knows only the tasks it created (another one answers "no such task").
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from virtual_mcp.fleet.sealing import Sealer, digest
from virtual_mcp.fleet.status import FleetStatus

logger = logging.getLogger(__name__)

PART = "sessions"
_DEADLINE = 1.0


class TaskFleet:
    def __init__(self, redis: Redis, status: FleetStatus, sealer: Sealer) -> None:
        self._redis = redis
        self._status = status
        self._sealer = sealer

    async def put(self, task_id: str, route: Mapping[str, Any], seconds: float) -> None:
        """Keep `route` for `seconds` (the task's life)."""
        if seconds <= 0:
            return
        sealed = self._sealer.seal(json.dumps({**route, "until": time.time() + seconds}).encode())
        try:
            with anyio.fail_after(_DEADLINE):
                await self._redis.set(_key(task_id), sealed, px=max(1, math.ceil(seconds * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed(PART, exc)
            logger.debug("tasks: recording a route failed (%s)", type(exc).__name__)
            return
        self._status.succeeded(PART)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The route of `task_id` with the seconds it has left; None if the fleet has none (or cannot say)."""
        try:
            with anyio.fail_after(_DEADLINE):
                sealed = await self._redis.get(_key(task_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed(PART, exc)
            logger.debug("tasks: looking a route up failed (%s)", type(exc).__name__)
            return None
        self._status.succeeded(PART)
        if sealed is None:
            return None
        opened = self._sealer.open(sealed.decode() if isinstance(sealed, bytes) else str(sealed))
        try:
            route = json.loads(opened) if opened is not None else None
        except ValueError:
            route = None
        if not isinstance(route, dict) or not isinstance(route.get("until"), int | float):
            return None
        seconds = float(route.pop("until")) - time.time()
        return {**route, "seconds": seconds} if seconds > 0 else None


def _key(task_id: str) -> str:
    return f"vmcp:task:{digest(task_id)}"

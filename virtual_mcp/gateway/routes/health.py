"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: started, and the database and the vault are
usable).

A replica whose Redis is unreachable still serves correctly on its own (fleet/status.py), so it stays ready: its
`/readyz` answers 200 with status `degraded` and the `redis` check naming what runs alone. Taking every replica out of
a load balancer because Redis is down would turn a degraded fleet into an outage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Each check's problem (None: fine), e.g. {"database": None, "vault": "master key ..."}.
Health = Callable[[], Awaitable[dict[str, str | None]]]
# Checks whose problem degrades the replica without making it unready.
SOFT_CHECKS = frozenset({"redis"})


def health_routes(ready: Callable[[], bool], endpoints: int, health: Health | None) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if not ready():
            return JSONResponse({"status": "starting"}, status_code=503)
        checks = {"config": f"{endpoints} endpoint(s)"}
        if health is not None:
            problems = await health()
            checks.update({name: problem or "ok" for name, problem in problems.items()})
            if any(problem for name, problem in problems.items() if name not in SOFT_CHECKS):
                return JSONResponse({"status": "not ready", "checks": checks}, status_code=503)
            if any(problems.values()):
                return JSONResponse({"status": "degraded", "checks": checks})
        return JSONResponse({"status": "ready", "checks": checks})

    return [Route("/healthz", healthz), Route("/readyz", readyz)]

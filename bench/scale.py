"""The scale scenario: the gateway on PostgreSQL and Redis, as replicas run it (docs/deployment.md).

- **Added latency of the distributed path**: 2026-07-28 tools/call at concurrency 1 (warm: token and catalog
  cached) through a gateway on PostgreSQL + Redis against the same gateway on its embedded SQLite store, each on
  the server core. Measured in turn, `ROUNDS` rounds of `ROUND_S` seconds; the figure is the median of each round's
  difference (goal: within 0.3 ms p50).
- **Throughput with one and two gateway processes** on one PostgreSQL database and one Redis: tools/call at
  `CONNECTIONS` connections (two wrk processes of half of them each: both at the one gateway, then one at each),
  nothing pinned: the processes share the machine's cores with wrk, the backend, PostgreSQL and Redis, as replicas
  on one host would. Reported as requests/s and the ratio two/one.

PostgreSQL and Redis are Debian's servers, started by the tests' kit (tests/services.py) with their own data
directories on loopback, and removed at the end.

`python -m bench.scale` runs this scenario alone; `make bench` runs it with the others.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import protocol
from bench.gateway import GROUP, SERVER, gateway_command, gateway_credentials, wait_until, write_gateway_config
from bench.procs import Child, Processes, free_port
from bench.wrk import WrkResult, ensure_wrk, lua_script, run_wrk
from tests.services import postgres_server, redis_server
from virtual_mcp.fleet.connection import REDIS_URL_ENV
from virtual_mcp.vault.engines import DATABASE_URL_ENV
from virtual_mcp.vault.keys import KEY_FILE_NAME

ROUNDS, ROUND_S = 5, 3
CONNECTIONS = 16
LATENCY_GOAL_MS = 0.3


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """`variables` set for the commands run meanwhile (the CLI reads the database URL from the environment)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Gateways:
    """Gateway processes on one configuration: embedded ones, or replicas sharing the database and Redis in
    `shared` (each with a data directory of its own holding the fleet's master key)."""

    def __init__(self, procs: Processes, config: Path, tmp: Path, shared: dict[str, str]) -> None:
        self.procs, self.config, self.tmp, self.shared = procs, config, tmp, shared
        self.count = 0
        with environment(shared):
            self.first = tmp / "replica-0"
            self.token = gateway_credentials(self.first)  # into the shared database
        self.embedded = tmp / "embedded"
        self.embedded_token = gateway_credentials(self.embedded)

    def start(self, core: int | None, distributed: bool = True) -> tuple[Child, str]:
        self.count += 1
        if distributed:
            data = self.tmp / f"replica-{self.count}"
            if not data.exists():
                data.mkdir(mode=0o700)
                shutil.copy2(self.first / KEY_FILE_NAME, data / KEY_FILE_NAME)
            env = self.shared
        else:
            data, env = self.embedded, {}
        port = free_port()
        name = f"scale-{'replica' if distributed else 'embedded'}-{self.count}"
        child = self.procs.start(name, gateway_command(self.config, data, port), core, port, env=env)
        self.procs.wait_listening(child)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            answer = httpx.get(f"{base}/readyz", timeout=5)
            checks = answer.json().get("checks", {})
            return answer.status_code == 200 and (not distributed or checks.get("redis") == "ok")

        wait_until(ready, child, "ready (with Redis)" if distributed else "ready")
        return child, f"{base}/mcp-server/{GROUP}/{SERVER}/server"


def scripts(tmp: Path, token: str, name: str) -> Path:
    headers = {**protocol.call_headers(protocol.MODERN), "Authorization": f"Bearer {token}"}
    script = tmp / f"{name}.lua"
    script.write_text(lua_script(protocol.call_body(protocol.MODERN), headers, [], protocol.ECHO_TEXT))
    return script


def checked(url: str, token: str) -> None:
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
        protocol.check_call(client, url, protocol.MODERN, timeout=60)


def scale(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, duration: int
) -> dict[str, Any]:
    with postgres_server() as pg, redis_server() as redis:
        shared = {DATABASE_URL_ENV: pg.url, REDIS_URL_ENV: redis.url}
        up_port = free_port()
        argv = [sys.executable, "-m", "bench.echo_backend", "--port", str(up_port)]
        procs.wait_listening(procs.start("scale-backend", argv, client_core, up_port))
        config = write_gateway_config(tmp / "scale", f"http://127.0.0.1:{up_port}/mcp")
        gateways = Gateways(procs, config, tmp / "scale", shared)
        return {
            "latency": added_latency(gateways, wrk, server_core, client_core, tmp),
            "throughput": throughput(gateways, wrk, tmp, duration),
            "postgres": pg.url.rsplit("@", 1)[-1],
            "redis": redis.url,
        }


def added_latency(
    gateways: Gateways, wrk: str, server_core: int | None, client_core: int | None, tmp: Path
) -> dict[str, Any]:
    embedded, embedded_url = gateways.start(server_core, distributed=False)
    replica, replica_url = gateways.start(server_core)
    runs: dict[str, list[WrkResult]] = {"embedded": [], "distributed": []}
    targets = {
        "embedded": (embedded_url, gateways.embedded_token, scripts(tmp, gateways.embedded_token, "scale-emb")),
        "distributed": (replica_url, gateways.token, scripts(tmp, gateways.token, "scale-dist")),
    }
    for url, token, script in targets.values():  # warm: token looked up, catalog fetched, connections open
        checked(url, token)
        run_wrk(wrk, url, script, CONNECTIONS, 1, client_core)
        checked(url, token)
    for _ in range(ROUNDS):
        for key, (url, token, script) in targets.items():
            runs[key].append(run_wrk(wrk, url, script, 1, ROUND_S, client_core))
            checked(url, token)
    for child in (embedded, replica):
        child.popen.terminate()
        child.popen.wait(timeout=30)
    differences = [
        d.p50_ms - e.p50_ms
        for e, d in zip(runs["embedded"], runs["distributed"], strict=True)
        if d.p50_ms is not None and e.p50_ms is not None
    ]
    return {
        "rounds": ROUNDS,
        "round_s": ROUND_S,
        "embedded": _summary(runs["embedded"]),
        "distributed": _summary(runs["distributed"]),
        "added_p50_ms": round(statistics.median(differences), 3) if differences else None,
        "added_p50_ms_rounds": [round(d, 3) for d in differences],
        "goal_ms": LATENCY_GOAL_MS,
    }


def _summary(results: list[WrkResult]) -> dict[str, Any]:
    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 3) if known else None

    return {
        "p50_ms": median([r.p50_ms for r in results]),
        "p99_ms": median([r.p99_ms for r in results]),
        "errors": sum(r.bad + r.socket_errors for r in results),
    }


def throughput(gateways: Gateways, wrk: str, tmp: Path, duration: int) -> dict[str, Any]:
    script = scripts(tmp, gateways.token, "scale-many")
    first, first_url = gateways.start(None)
    checked(first_url, gateways.token)
    one = _load(wrk, [first_url, first_url], script, duration)
    checked(first_url, gateways.token)
    second, second_url = gateways.start(None)
    checked(second_url, gateways.token)
    two = _load(wrk, [first_url, second_url], script, duration)
    for child in (first, second):
        if not child.alive():
            raise child.fail("died under load")
    return {
        "connections": CONNECTIONS,
        "seconds": duration,
        "one_gateway": one,
        "two_gateways": two,
        "ratio": round(two["rps"] / one["rps"], 2) if one["rps"] else None,
        "cores": len(os.sched_getaffinity(0)),
    }


def _load(wrk: str, urls: list[str], script: Path, duration: int) -> dict[str, Any]:
    """Two wrk processes at once, CONNECTIONS/2 connections each, at `urls` (one each): their good answers/s,
    summed."""
    half = CONNECTIONS // len(urls)
    run_wrk(wrk, urls[0], script, half, 1, None)  # warm-up, discarded
    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(lambda url: run_wrk(wrk, url, script, half, duration, None), urls))
    return {
        "rps": round(sum(r.rps for r in results), 1),
        "errors": sum(r.bad + r.socket_errors for r in results),
        "p50_ms": [r.p50_ms for r in results],
    }


def markdown(result: dict[str, Any]) -> list[str]:
    """Rows for the scenarios table."""
    rows = []
    latency = result.get("latency")
    if latency:
        rows.append(
            f"| tools/call, gateway on PostgreSQL + Redis vs embedded (SQLite), warm, c=1, {latency['rounds']} rounds, "
            f"median of the paired differences | p50 {latency['distributed']['p50_ms']} ms vs "
            f"{latency['embedded']['p50_ms']} ms ({latency['added_p50_ms']:+} ms) | within {latency['goal_ms']} ms |"
        )
    through = result.get("throughput")
    if through:
        one, two = through["one_gateway"], through["two_gateways"]
        rows.append(
            f"| tools/call throughput on PostgreSQL + Redis, c={through['connections']}, {through['cores']} cores, "
            f"1 vs 2 gateway processes | {one['rps']} vs {two['rps']} req/s ({through['ratio']}x; "
            f"{one['errors'] + two['errors']} errors) | report the ratio |"
        )
    return rows


def main() -> int:
    wrk = ensure_wrk()
    root = Path(__file__).resolve().parent.parent
    cpus = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cpus[1], cpus[0]) if len(cpus) >= 2 else (None, None)
    logs = root / "bench" / "results" / "logs"
    with tempfile.TemporaryDirectory(prefix="vmcp-scale-") as name, Processes(logs, root) as procs:
        result = scale(procs, wrk, server_core, client_core, Path(name), 5)
    out = root / "bench" / "results" / "scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(["| scenario | measured | target |", "|---|---|---|", *markdown(result)]))
    print(f"\nbench: results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

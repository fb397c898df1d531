"""`python -m bench.run`: tools/call throughput and latency of virtual-mcp against fastmcp proxies and the backend.

Starts, each as its own process group pinned with taskset: the echo backend (low-level SDK server), a second copy of
it as the "direct" target, the virtual-mcp gateway, fastmcp's `create_proxy` (new backend session per call) and a
fastmcp proxy over one shared backend session. Then, per protocol era and target: one checked call, a warm-up, a
concurrency-1 latency run and a throughput run with wrk. Prints a markdown table; writes bench/results/latest.json.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench import chart, protocol, scale, scenarios
from bench.gateway import (
    GROUP,
    SERVER,
    Checkout,
    gateway_command,
    gateway_credentials,
    wait_until,
    write_gateway_config,
)
from bench.procs import Child, Processes, ProcessFailed, Terminated, exit_on_signals, free_port
from bench.report import DIRECT, Outcome, markdown, outcome_json
from bench.wrk import WrkError, ensure_wrk, lua_script, run_wrk, wrk_version

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

TARGETS = {
    DIRECT: "direct (backend)",
    "virtual-mcp": "virtual-mcp",
    "fastmcp-per-call": "fastmcp create_proxy (default)",
    "fastmcp-shared": "fastmcp proxy (shared session)",
}
BASELINE = "virtual-mcp-baseline"  # with --baseline REV: the gateway as of commit REV, beside this checkout's


@dataclass
class Target:
    key: str
    label: str
    url: str
    child: Child
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (virtual-mcp: its token)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each measured wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each target/era (0: none)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the throughput run (default 16)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 s warm-up: a smoke test of the harness")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of: {', '.join(TARGETS)}")
    parser.add_argument("--eras", default=",".join(protocol.ERAS), help="comma-separated protocol versions")
    parser.add_argument("--server-core", type=int, default=1, help="core of the server under test (default 1)")
    parser.add_argument("--client-core", type=int, default=0, help="core of wrk and the upstream backend (default 0)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    parser.add_argument(
        "--skip-scenarios", action="store_true", help="only tools/call: no tools/list or start-up scenarios"
    )
    parser.add_argument(
        "--soak-seconds", type=int, default=600, help="length of the steady-load soak scenario (0: none; default 600)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the gateway as of this git commit (a temporary worktree), to compare in the same run",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1, 1
    if args.duration < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--duration and --concurrency must be at least 1, --warmup at least 0")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    if DIRECT not in args.targets:
        print("bench: note: without the direct target there are no ratios", file=sys.stderr)
    if args.baseline:
        args.targets.insert(args.targets.index("virtual-mcp") + 1 if "virtual-mcp" in args.targets else 0, BASELINE)
    args.eras = [e.strip() for e in args.eras.split(",") if e.strip()]
    bad_eras = [e for e in args.eras if e not in protocol.ERAS]
    if bad_eras:
        parser.error(f"unknown era(s) {bad_eras}; choose from {list(protocol.ERAS)}")
    return args


def choose_cores(server_core: int, client_core: int) -> tuple[int | None, int | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if server_core in cpus and client_core in cpus and server_core != client_core:
        return server_core, client_core, f"server under test on core {server_core}, wrk + backend on {client_core}"
    return None, None, f"NOT pinned: need two distinct usable cores ({server_core}, {client_core}), have {cpus}"


def baseline_checkout(rev: str, tmp: Path) -> tuple[Checkout, str]:
    """A detached worktree of `rev` under `tmp` (its files go with `tmp`; git forgets it at the next run's prune),
    and the commit's short name."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False, capture_output=True)
    path = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True, capture_output=True
    )
    short = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Checkout(path), short


def start_targets(
    procs: Processes,
    wanted: list[str],
    server_core: int | None,
    client_core: int | None,
    tmp: Path,
    baseline: tuple[Checkout, str] | None = None,
) -> tuple[Child, list[Target]]:
    """Start the upstream backend and every wanted target; returns them once each is serving."""
    py = sys.executable
    up_port = free_port()
    upstream = procs.start(
        "backend-upstream", [py, "-m", "bench.echo_backend", "--port", str(up_port)], client_core, up_port
    )
    procs.wait_listening(upstream)
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"

    targets: list[Target] = []
    for key in wanted:
        port = free_port()
        if key == DIRECT:
            child = procs.start(
                "backend-direct", [py, "-m", "bench.echo_backend", "--port", str(port)], server_core, port
            )
            url = f"http://127.0.0.1:{port}/mcp"
        elif key == "virtual-mcp":
            config = write_gateway_config(tmp / "gateway", upstream_url)
            token = gateway_credentials(tmp / "gateway" / "data")
            argv = gateway_command(config, tmp / "gateway" / "data", port)
            child = procs.start("virtual-mcp", argv, server_core, port)
            url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{SERVER}/server"
            targets.append(Target(key, TARGETS[key], url, child, {"Authorization": f"Bearer {token}"}))
            continue
        elif key == BASELINE and baseline is not None:
            code, short = baseline
            assert code.root is not None
            # A commit from before the per-principal limits does not know the gateway document's `limits:`.
            knows_limits = "sessions_per_principal" in (code.root / "virtual_mcp/config/settings.py").read_text()
            config = write_gateway_config(tmp / "baseline-gateway", upstream_url, limits=knows_limits)
            token = gateway_credentials(tmp / "baseline-gateway" / "data", code)
            argv = gateway_command(config, tmp / "baseline-gateway" / "data", port, code)
            child = procs.start("virtual-mcp-baseline", argv, server_core, port, cwd=code.root)
            url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{SERVER}/server"
            label = f"virtual-mcp @ {short} (baseline)"
            targets.append(Target(key, label, url, child, {"Authorization": f"Bearer {token}"}))
            continue
        else:
            session = "shared" if key == "fastmcp-shared" else "per-call"
            argv = [
                py,
                "-m",
                "bench.fastmcp_proxy",
                "--backend",
                upstream_url,
                "--port",
                str(port),
                "--session",
                session,
            ]
            child = procs.start(key, argv, server_core, port)
            url = f"http://127.0.0.1:{port}/mcp"
        targets.append(Target(key, TARGETS[key], url, child))

    for target in targets:
        procs.wait_listening(target.child)
        if target.key in ("virtual-mcp", BASELINE):
            ready_url = target.url.split("/mcp-server/")[0] + "/readyz"
            wait_until(lambda u=ready_url: httpx.get(u, timeout=2).status_code == 200, target.child, "ready")
    return upstream, targets


def bench_target(
    target: Target, era: str, args: argparse.Namespace, wrk: str, client_core: int | None, tmp: Path
) -> Outcome:
    outcome = Outcome(target.key, target.label, era)
    sessions: list[protocol.Session] = []
    with httpx.Client(timeout=10, headers=target.headers) as client:
        try:
            if era == protocol.LEGACY:
                # One session per wrk connection, each initialized once and reused for all of its calls.
                sessions = [protocol.open_session(client, target.url) for _ in range(args.concurrency)]
                protocol.check_call(client, target.url, era, sessions[0])
                if not any(s.id for s in sessions):
                    outcome.notes.append("stateless: initialize returned no Mcp-Session-Id")
            else:
                protocol.check_call(client, target.url, era)
        except (protocol.ProtocolError, httpx.HTTPError, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            return outcome
        try:
            body = protocol.call_body(era)
            headers = {**protocol.call_headers(era), **target.headers}
            ids = [s.id or "" for s in sessions]
            one = tmp / f"{target.key}-{era}-c1.lua"
            many = tmp / f"{target.key}-{era}-cN.lua"
            one.write_text(lua_script(body, headers, ids[:1], protocol.ECHO_TEXT))
            many.write_text(lua_script(body, headers, ids, protocol.ECHO_TEXT))
            first = sessions[0] if sessions else None

            def settle() -> None:
                # wrk stops with calls still queued in the target; one checked call waits them out, so a run
                # never starts with the previous run's backlog (and proves the target still answers correctly).
                protocol.check_call(client, target.url, era, first, timeout=60)

            if args.warmup:
                run_wrk(wrk, target.url, many, args.concurrency, args.warmup, client_core)
                settle()
            outcome.latency = run_wrk(wrk, target.url, one, 1, args.duration, client_core)
            settle()
            outcome.throughput = run_wrk(wrk, target.url, many, args.concurrency, args.duration, client_core)
            settle()
        except (WrkError, protocol.ProtocolError, httpx.HTTPError, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            for session in sessions:
                protocol.close_session(client, target.url, session)
    if not target.child.alive():
        outcome.error = (outcome.error or "") + f" {target.child.fail('died under load')}"
    return outcome


def environment(wrk: str, cpus: list[int]) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": cpus,
        "wrk": wrk_version(wrk),
        "packages": {d: version(d) for d in ("virtual-mcp", "mcp", "fastmcp", "uvicorn", "starlette")},
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "virtual_mcp"))},
    }


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except (KeyboardInterrupt, Terminated) as exc:
        # Every child was already stopped on the way out (Processes.__exit__).
        print(f"bench: interrupted ({type(exc).__name__} {exc}); no results written", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    wrk = ensure_wrk()
    cpus = sorted(os.sched_getaffinity(0))
    server_core, client_core, pinning = choose_cores(args.server_core, args.client_core)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})  # the harness's own checks stay off the server's core
    print(f"bench: {pinning}; {args.duration} s runs, c=1 and c={args.concurrency}", flush=True)

    outcomes: list[Outcome] = []
    scenario_results: dict[str, Any] = {}
    scenario_error: str | None = None
    log_dir = RESULTS / "logs"
    with exit_on_signals(), tempfile.TemporaryDirectory(prefix="vmcp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with Processes(log_dir=log_dir, cwd=ROOT) as procs:
            try:
                baseline = baseline_checkout(args.baseline, tmp) if args.baseline else None
                _, targets = start_targets(procs, args.targets, server_core, client_core, tmp, baseline)
            except ProcessFailed as exc:
                print(f"bench: could not start the targets: {exc}", file=sys.stderr)
                return 1
            for era in args.eras:
                for target in targets:
                    print(f"bench: {era} {target.label} ...", flush=True)
                    outcome = bench_target(target, era, args, wrk, client_core, tmp)
                    if outcome.error:
                        print(f"bench:   error: {outcome.error}", flush=True)
                    outcomes.append(outcome)
            if not args.skip_scenarios:
                for target in targets:  # the scenarios' gateways get the server core to themselves
                    target.child.popen.terminate()
                scenario_results, scenario_error = run_scenarios(procs, wrk, server_core, client_core, tmp, args)

    table = markdown(outcomes, args.concurrency)
    if scenario_results:
        table += "\n\n" + scenarios.markdown(scenario_results)
    result = {
        "schema": 1,
        "started_at": started_at,
        "elapsed_s": round(time.monotonic() - started, 1),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "quick": args.quick,
            "eras": args.eras,
            "targets": args.targets,
            "server_core": server_core,
            "client_core": client_core,
            "pinning": pinning,
            "load_generator": "wrk (one thread per connection; Lua-checked responses)",
        },
        "environment": environment(wrk, cpus),
        "results": [outcome_json(o, outcomes) for o in outcomes],
        "scenarios": scenario_results,
        "scenario_error": scenario_error,
        "markdown": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    try:
        chart.render(result, args.output.with_suffix(".png"))
    except ImportError:
        print("bench: matplotlib is not installed (make bench installs it): no chart drawn", file=sys.stderr)
    print()
    print(table)
    print(f"\nbench: {result['elapsed_s']} s; results in {args.output} (chart beside it); server logs in {log_dir}")
    failed = (
        scenario_error is not None
        or any(r["warm"]["errors"] for k, r in scenario_results.items() if k.startswith("tools_list"))
        or bool(scenario_results.get("soak", {}).get("run", {}).get("errors"))
    )
    return 1 if failed or any(o.error or o.errors for o in outcomes) else 0


def run_scenarios(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], str | None]:
    results: dict[str, Any] = {}
    try:
        print("bench: tools/list over many backends ...", flush=True)
        results["tools_list"] = scenarios.tools_list(procs, wrk, server_core, client_core, tmp, args.duration, False)
        print("bench: tools/list with a backend that never answers ...", flush=True)
        results["tools_list_hung"] = scenarios.tools_list(
            procs, wrk, server_core, client_core, tmp, args.duration, True
        )
        print("bench: credential path ...", flush=True)
        results["credential_path"] = scenarios.credential_path(procs, wrk, server_core, client_core, tmp, args.duration)
        print("bench: idle sessions ...", flush=True)
        results["idle_sessions"] = scenarios.idle_sessions(procs, server_core, client_core, tmp)
        print("bench: principals holding upstream sessions ...", flush=True)
        results["principal_sessions"] = scenarios.principal_sessions(procs, server_core, client_core, tmp)
        if args.soak_seconds > 0:
            print(f"bench: soak, {args.soak_seconds} s ...", flush=True)
            results["soak"] = scenarios.soak(procs, wrk, server_core, client_core, tmp, args.soak_seconds)
        print("bench: serve start-up ...", flush=True)
        results["startup"] = scenarios.startup(server_core, tmp)
        print("bench: scale, PostgreSQL and Redis ...", flush=True)
        results["scale"] = scale.scale(procs, wrk, server_core, client_core, tmp, args.duration)
    except (
        ProcessFailed,
        WrkError,
        RuntimeError,
        httpx.HTTPError,
        KeyError,
        ValueError,
        protocol.ProtocolError,
    ) as exc:
        print(f"bench:   scenario error: {type(exc).__name__}: {exc}", flush=True)
        return results, f"{type(exc).__name__}: {exc}"
    return results, None


if __name__ == "__main__":
    sys.exit(main())

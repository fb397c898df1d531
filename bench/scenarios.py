"""The benchmark's other scenarios, each against a gateway of its own (pinned like the tools/call targets):

- `tools/list` on `/mcp` over 20 backends x 50 tools, warm: latency at concurrency 1 (wrk, answers checked);
- the same with one more backend that accepts requests and never answers: the first list (which waits the
  backend's deadline once) and the lists after it;
- tools/call to one backend behind a static secret header and behind OAuth client credentials (a cached token from
  a real authorization server): the latency the credential path adds;
- the gateway's resident memory with 1,000 idle 2025-11-25 client sessions;
- a soak: `--soak-seconds` (600) of tools/call at about 500 requests/s: errors and resident memory over time;
- `serve` start-up with 50 servers configured: seconds from the process start until `/readyz` answers 200.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import protocol
from bench.gateway import (
    GROUP,
    SERVER,
    create_token,
    gateway_command,
    gateway_credentials,
    servers_config,
    store_secret,
    wait_until,
    write_gateway_config,
)
from bench.procs import Child, Processes, free_port
from bench.wrk import lua_script, run_wrk

BACKENDS, TOOLS = 20, 50
LIST_DEADLINE_S = 3.0  # the gateway's default list_deadline_seconds
STARTUP_SERVERS = 50
IDLE_SESSIONS = 1000
SOAK_RATE, SOAK_CONNECTIONS, SOAK_SAMPLE_S = 500, 8, 5.0
OAUTH_SECRET_REF = "tfy-secret://bench:oauth:client_secret"  # noqa: S105 - a reference, not a secret


def list_config(directory: Path, ports: list[int], hung_port: int | None) -> Path:
    urls = [f"http://127.0.0.1:{port}/mcp" for port in [*ports, *([hung_port] if hung_port is not None else [])]]
    return servers_config(directory, "wide", "b", urls)


def list_body() -> str:
    meta = {
        "io.modelcontextprotocol/protocolVersion": protocol.MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})


def list_headers(token: str) -> dict[str, str]:
    return {
        **protocol.BASE_HEADERS,
        "Mcp-Protocol-Version": protocol.MODERN,
        "Mcp-Method": "tools/list",
        "Authorization": f"Bearer {token}",
    }


def tools_list(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, duration: int, hung: bool
) -> dict[str, Any]:
    """Warm tools/list latency on /mcp over BACKENDS x TOOLS tools (plus a backend that never answers, if `hung`)."""
    name = "wide-backends-hung" if hung else "wide-backends"
    ports_file = tmp / f"{name}.ports"
    argv = [sys.executable, "-m", "bench.wide_backend", "--ports-file", str(ports_file), "--count", str(BACKENDS)]
    argv += ["--tools", str(TOOLS), *(["--hung"] if hung else [])]
    backends = procs.start(name, argv, client_core)
    # Every backend listens before the gateway's first list, or it would be left out of the warm runs.
    wait_until(ports_file.exists, backends, "listening on every port")
    ports = [int(line) for line in ports_file.read_text().split()]
    hung_port = ports.pop() if hung else None
    directory = tmp / name
    config = list_config(directory, ports, hung_port)
    token = create_token(directory / "data")
    port = free_port()
    gateway = procs.start(f"virtual-mcp-{name}", gateway_command(config, directory / "data", port), server_core, port)
    procs.wait_listening(gateway)
    url = f"http://127.0.0.1:{port}/mcp"
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, gateway, "ready")
    with httpx.Client(timeout=30, headers=list_headers(token)) as client:
        started = time.perf_counter()
        first = client.post(url, content=list_body())
        first_ms = (time.perf_counter() - started) * 1000
        listed = first.json()["result"]["tools"]
        again = client.post(url, content=list_body()).json()["result"]["tools"]
    expected = BACKENDS * TOOLS
    if len(listed) != expected or len(again) != expected:
        raise RuntimeError(f"tools/list gave {len(listed)} then {len(again)} tools, expected {expected}")
    last_tool = f"wide__b{BACKENDS - 1}__tool_{TOOLS - 1}"
    script = tmp / f"{name}.lua"
    script.write_text(lua_script(list_body(), list_headers(token), [], last_tool))
    result = run_wrk(wrk, url, script, 1, duration, client_core)
    return {
        "backends": BACKENDS,
        "tools_per_backend": TOOLS,
        "hung_backend": hung,
        "first_list_ms": round(first_ms, 1),
        "warm": result.as_dict(),
    }


def echo_gateway(
    procs: Processes, name: str, server_core: int | None, client_core: int | None, tmp: Path
) -> tuple[Child, str, str]:
    """An echo backend and a gateway in front of it (static secret header); the gateway, its URL and a token."""
    up_port = free_port()
    argv = [sys.executable, "-m", "bench.echo_backend", "--port", str(up_port)]
    upstream = procs.start(f"{name}-backend", argv, client_core, up_port)
    procs.wait_listening(upstream)
    directory = tmp / name
    config = write_gateway_config(directory, f"http://127.0.0.1:{up_port}/mcp")
    token = gateway_credentials(directory / "data")
    port = free_port()
    gateway = procs.start(f"virtual-mcp-{name}", gateway_command(config, directory / "data", port), server_core, port)
    procs.wait_listening(gateway)
    return gateway, f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{SERVER}/server", token


def soak(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, seconds: int
) -> dict[str, Any]:
    """`seconds` of steady tools/call load (2026-07-28) at about SOAK_RATE requests/s: errors, and the gateway's
    resident memory sampled every few seconds; growth is measured from the end of the first minute (warm-up)."""
    gateway, url, token = echo_gateway(procs, "soak", server_core, client_core, tmp)
    headers = {**protocol.call_headers(protocol.MODERN), "Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        protocol.check_call(client, url, protocol.MODERN)
    # wrk has no rate option: each connection waits between its calls so that together they make about SOAK_RATE.
    pause_ms = max(int(1000 * SOAK_CONNECTIONS / SOAK_RATE) - 2, 0)  # minus what a call itself takes
    script = tmp / "soak.lua"
    script.write_text(
        lua_script(protocol.call_body(protocol.MODERN), headers, [], protocol.ECHO_TEXT)
        + f"\nfunction delay()\n  return {pause_ms}\nend\n"
    )
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_wrk, wrk, url, script, SOAK_CONNECTIONS, seconds, client_core)
        while not running.done():
            samples.append((round(time.monotonic() - started, 1), round(_rss_mb(gateway.pid), 1)))
            time.sleep(SOAK_SAMPLE_S)
        result = running.result()
    warm = [rss for at, rss in samples if at >= min(60.0, seconds / 2)]
    base = warm[0] if warm else samples[-1][1]
    return {
        "seconds": seconds,
        "target_rate": SOAK_RATE,
        "run": result.as_dict(),
        "rss_mb_after_warmup": base,
        "rss_mb_max_after_warmup": max(warm) if warm else base,
        "rss_growth_pct": round((max(warm) - base) * 100 / base, 2) if warm else 0.0,
        "rss_samples": samples,
    }


def idle_sessions(
    procs: Processes, server_core: int | None, client_core: int | None, tmp: Path, count: int = IDLE_SESSIONS
) -> dict[str, Any]:
    """The gateway's resident memory with `count` open, idle 2025-11-25 client sessions (each initialized and then
    left alone), against its memory after one warm call."""
    gateway, url, token = echo_gateway(procs, "idle", server_core, client_core, tmp)
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        first = protocol.open_session(client, url)
        protocol.check_call(client, url, protocol.LEGACY, first)
        before = _rss_mb(gateway.pid)
        started = time.perf_counter()
        sessions = [protocol.open_session(client, url) for _ in range(count - 1)]
        opened_s = time.perf_counter() - started
        if not all(s.id for s in sessions):
            raise RuntimeError("the gateway opened a session without an id")
        protocol.check_call(client, url, protocol.LEGACY, sessions[-1])  # the last one works, the first still too
        protocol.check_call(client, url, protocol.LEGACY, first)
        after = _rss_mb(gateway.pid)
    return {
        "sessions": count,
        "rss_mb_warm": round(before, 1),
        "rss_mb_with_sessions": round(after, 1),
        "per_session_kb": round((after - before) * 1024 / count, 1),
        "open_s": round(opened_s, 1),
    }


def credential_path(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, duration: int
) -> dict[str, Any]:
    """tools/call latency (c=1, 2026-07-28) to the same echo backend behind a static secret header and behind
    OAuth client credentials with a cached token, from a real authorization server (the tests' oidc-provider)."""
    from tests.oauth_server import CC_CLIENT_ID, CLIENT_SECRETS, SERVER_SCRIPT, ensure_installed, server_config

    node = ensure_installed()
    auth = procs.start(
        "oauth-server", [str(node), str(SERVER_SCRIPT), json.dumps(server_config(access_token_ttl=3600))], client_core
    )
    ready = re.compile(r"^READY (\d+)$", re.MULTILINE)
    wait_until(lambda: ready.search(auth.log.read_text(errors="replace")) is not None, auth, "ready")
    match = ready.search(auth.log.read_text(errors="replace"))
    assert match is not None
    token_url = httpx.get(f"http://127.0.0.1:{match[1]}/.well-known/openid-configuration", timeout=10).json()[
        "token_endpoint"
    ]
    up_port = free_port()
    upstream = procs.start(
        "cred-backend", [sys.executable, "-m", "bench.echo_backend", "--port", str(up_port)], client_core, up_port
    )
    procs.wait_listening(upstream)
    directory = tmp / "credentials"
    config = write_gateway_config(directory, f"http://127.0.0.1:{up_port}/mcp")
    with (config / f"{GROUP}.yaml").open("a") as f:
        f.write(
            "  - name: echo-2lo\n"
            "    type: integration/mcp-server/remote\n"
            f"    url: http://127.0.0.1:{up_port}/mcp\n"
            "    authorized_subjects: [team:bench]\n"
            "    auth_data:\n"
            "      type: oauth2\n"
            "      grant_type: client_credentials\n"
            f"      token_url: {token_url}\n"
            f"      client_id: {CC_CLIENT_ID}\n"
            f"      client_secret: {OAUTH_SECRET_REF}\n"
            "      scopes: [mcp:read]\n"
        )
    token = gateway_credentials(directory / "data")
    store_secret(directory / "data", OAUTH_SECRET_REF, CLIENT_SECRETS[CC_CLIENT_ID])
    port = free_port()
    gateway = procs.start(
        "virtual-mcp-credentials", gateway_command(config, directory / "data", port), server_core, port
    )
    procs.wait_listening(gateway)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, gateway, "ready")
    headers = {**protocol.call_headers(protocol.MODERN), "Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    for server in (SERVER, "echo-2lo"):
        url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{server}/server"
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            protocol.check_call(client, url, protocol.MODERN)  # the first call obtains the token
        script = tmp / f"cred-{server}.lua"
        script.write_text(lua_script(protocol.call_body(protocol.MODERN), headers, [], protocol.ECHO_TEXT))
        out["static" if server == SERVER else "client_credentials"] = run_wrk(
            wrk, url, script, 1, duration, client_core
        ).as_dict()
    static, oauth = out["static"]["p50_ms"], out["client_credentials"]["p50_ms"]
    out["added_p50_ms"] = round(oauth - static, 3) if static is not None and oauth is not None else None
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def startup(server_core: int | None, tmp: Path, runs: int = 3) -> dict[str, Any]:
    """Seconds from `serve` starting until /readyz is 200, with STARTUP_SERVERS servers configured (median)."""
    urls = [f"http://127.0.0.1:9/s{i}/mcp" for i in range(STARTUP_SERVERS)]
    servers = servers_config(tmp / "startup", "many", "s", urls)
    times = []
    for run in range(runs):
        port = free_port()
        argv = gateway_command(servers, tmp / "startup" / f"data{run}", port)
        pin = ["taskset", "-c", str(server_core)] if server_core is not None else []
        started = time.perf_counter()
        process = subprocess.Popen([*pin, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = started + 30
            while time.perf_counter() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.01)
            else:
                raise RuntimeError("serve did not become ready within 30 s")
            times.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=10)
    return {
        "servers": STARTUP_SERVERS,
        "ready_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
    }


def markdown(results: dict[str, Any]) -> str:
    rows = ["| scenario | measured | target |", "|---|---|---|"]
    warm = results.get("tools_list")
    if warm:
        w = warm["warm"]
        rows.append(
            f"| tools/list on /mcp, {warm['backends']} backends x {warm['tools_per_backend']} tools, warm, c=1 | "
            f"p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms ({w['errors']} errors) | p50 <= 5 ms |"
        )
    hung = results.get("tools_list_hung")
    if hung:
        w = hung["warm"]
        rows.append(
            f"| the same plus a backend that never answers | first list {hung['first_list_ms']} ms "
            f"(deadline {LIST_DEADLINE_S:g} s), then p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms | the deadline once |"
        )
    cred = results.get("credential_path")
    if cred:
        rows.append(
            f"| tools/call, OAuth client credentials (cached token) vs static header, c=1 | p50 "
            f"{cred['client_credentials']['p50_ms']} ms vs {cred['static']['p50_ms']} ms "
            f"({cred['added_p50_ms']:+} ms) | within 0.2 ms |"
        )
    soaked = results.get("soak")
    if soaked:
        run = soaked["run"]
        measured = f"{run['rps']} req/s for {soaked['seconds']} s, {run['errors']} errors, RSS "
        measured += f"{soaked['rss_mb_after_warmup']} MB after warm-up, at most {soaked['rss_mb_max_after_warmup']} MB "
        measured += f"({soaked['rss_growth_pct']:+}%)"
        rows.append(f"| steady tools/call load at ~{soaked['target_rate']} req/s | {measured} | no error, <= 5% |")
    idle = results.get("idle_sessions")
    if idle:
        measured = f"{idle['rss_mb_with_sessions']} MB ({idle['rss_mb_warm']} MB warm before them; "
        measured += f"{idle['per_session_kb']} KB per session)"
        rows.append(f"| gateway RSS with {idle['sessions']} idle 2025-11-25 client sessions | {measured} | <= 150 MB |")
    start = results.get("startup")
    if start:
        measured = f"median {start['median_s']} s of {start['ready_s']}"
        rows.append(f"| `serve` ready with {start['servers']} servers | {measured} | < 2 s |")
    return "\n".join(rows)

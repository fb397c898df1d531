"""The benchmark's other scenarios, each against a gateway of its own (pinned like the tools/call targets):

- `tools/list` on `/mcp` over 20 backends x 50 tools, warm: latency at concurrency 1 (wrk, answers checked);
- the same with one more backend that accepts requests and never answers: the first list (which waits the
  backend's deadline once) and the lists after it;
- tools/call to one backend behind a static secret header, behind OAuth client credentials and behind a per-user
  OAuth token (connected through the gateway's consent link), tokens cached, from a real authorization server: the
  latency the credential path adds (the three in turn, nine rounds of 2 s; the median of each OAuth run's
  difference from the static run of its round);
- the gateway's resident memory with 1,000 idle 2025-11-25 client sessions;
- the gateway's resident memory with 1,000 principals (IdP JWTs) each holding a live 2025-11-25 upstream session;
- a soak: `--soak-seconds` (600) of tools/call at about 500 requests/s (wrk paced, the pause calibrated by a short
  run first): errors and resident memory over time;
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
import jwt

from bench import protocol, scale
from bench.gateway import (
    BENCH_LIMITS,
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
PRINCIPALS = 1000
JWT_SECRET_REF = "tfy-secret://bench:jwt:hmac"  # noqa: S105 - a reference, not a secret
JWT_KEY = "bench HS256 key for the principals scenario, not a secret"
JWT_ISSUER, JWT_AUDIENCE = "https://idp.bench.example", "https://gateway.bench.example"
SOAK_RATE, SOAK_CONNECTIONS, SOAK_SAMPLE_S, SOAK_CALIBRATION_S = 500, 20, 5.0, 10
CREDENTIAL_ROUNDS, CREDENTIAL_RUN_S = 9, 2
OAUTH_SECRET_REF = "tfy-secret://bench:oauth:client_secret"  # noqa: S105 - a reference, not a secret
OAUTH_CODE_SECRET_REF = "tfy-secret://bench:oauth3:client_secret"  # noqa: S105 - a reference, not a secret


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
    # The pause is calibrated with a short run first (a call and wrk's timer add to each connection's cycle).
    cycle_ms = 1000 * SOAK_CONNECTIONS / SOAK_RATE
    pause_ms = round(cycle_ms) - 2
    script = tmp / "soak.lua"
    body = lua_script(protocol.call_body(protocol.MODERN), headers, [], protocol.ECHO_TEXT)
    script.write_text(body + f"\nfunction delay()\n  return {pause_ms}\nend\n")
    trial = run_wrk(wrk, url, script, SOAK_CONNECTIONS, SOAK_CALIBRATION_S, client_core)
    overhead_ms = 1000 * SOAK_CONNECTIONS / trial.rps - pause_ms if trial.rps else 2.0
    pause_ms = max(round(cycle_ms - overhead_ms), 0)
    script.write_text(body + f"\nfunction delay()\n  return {pause_ms}\nend\n")
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
        "pause_ms": pause_ms,
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


def principal_sessions(
    procs: Processes, server_core: int | None, client_core: int | None, tmp: Path, count: int = PRINCIPALS
) -> dict[str, Any]:
    """The gateway's resident memory with `count` principals each holding a live upstream session: each (an IdP JWT
    of its own) makes one tools/call to a 2025-11-25 backend that keeps a session per client, so the gateway opens
    (and keeps, for its idle time) one backend session per principal; against its memory after one warm call."""
    up_port = free_port()
    argv = [sys.executable, "-m", "bench.echo_backend", "--port", str(up_port), "--sessions"]
    upstream = procs.start("principals-backend", argv, client_core, up_port)
    procs.wait_listening(upstream)
    directory = tmp / "principals"
    config = write_gateway_config(directory, f"http://127.0.0.1:{up_port}/mcp")
    (config / "gateway.yaml").write_text(
        BENCH_LIMITS
        + f"inbound:\n  jwt:\n    issuer: {JWT_ISSUER}\n    audience: {JWT_AUDIENCE}\n"
        + f"    hs256_secret: {JWT_SECRET_REF}\n    teams_claim: groups\n"
    )
    gateway_credentials(directory / "data")
    store_secret(directory / "data", JWT_SECRET_REF, JWT_KEY)
    port = free_port()
    command = gateway_command(config, directory / "data", port)
    gateway = procs.start("virtual-mcp-principals", command, server_core, port)
    procs.wait_listening(gateway)
    url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{SERVER}/server"
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "iat": now, "exp": now + 3600, "groups": ["bench"]}
    tokens = [jwt.encode({**claims, "sub": f"user{i}@bench.example"}, JWT_KEY, algorithm="HS256") for i in range(count)]
    with httpx.Client(timeout=30) as client:

        def call_as(token: str) -> None:
            client.headers["Authorization"] = f"Bearer {token}"
            protocol.check_call(client, url, protocol.MODERN)

        call_as(tokens[0])
        before = _rss_mb(gateway.pid)
        started = time.perf_counter()
        for token in tokens[1:]:
            call_as(token)
        called_s = time.perf_counter() - started
        call_as(tokens[0])  # the first principal's session is still there (and still works)
        after = _rss_mb(gateway.pid)
        metrics = client.get(f"http://127.0.0.1:{port}/metrics").text
    held = re.search(r"^vmcp_upstream_sessions (\S+)$", metrics, re.MULTILINE)
    sessions = int(float(held.group(1))) if held else None
    if sessions is None or sessions < count:
        raise RuntimeError(f"the gateway holds {sessions} upstream sessions for {count} principals")
    return {
        "principals": count,
        "upstream_sessions": sessions,
        "rss_mb_warm": round(before, 1),
        "rss_mb_with_sessions": round(after, 1),
        "per_principal_kb": round((after - before) * 1024 / count, 1),
        "calls_s": round(called_s, 1),
    }


def credential_path(
    procs: Processes, wrk: str, server_core: int | None, client_core: int | None, tmp: Path, duration: int
) -> dict[str, Any]:
    """tools/call latency (c=1, 2026-07-28) to the same echo backend behind a static secret header, behind OAuth
    client credentials (2LO) and behind a per-user authorization-code token (3LO, connected once through the
    gateway's consent link, PKCE S256), each token cached, from a real authorization server (the tests'
    oidc-provider)."""
    from tests.oauth_server import CC_CLIENT_ID, CLIENT_SECRETS, CODE_CLIENT_ID, SERVER_SCRIPT, ensure_installed
    from tests.oauth_server import server_config as auth_server_config

    node = ensure_installed()
    port = free_port()
    callback = f"http://127.0.0.1:{port}/oauth/callback"
    auth_config = auth_server_config(redirect_uris=(callback,), access_token_ttl=3600)
    auth = procs.start("oauth-server", [str(node), str(SERVER_SCRIPT), json.dumps(auth_config)], client_core)
    ready = re.compile(r"^READY (\d+)$", re.MULTILINE)
    wait_until(lambda: ready.search(auth.log.read_text(errors="replace")) is not None, auth, "ready")
    match = ready.search(auth.log.read_text(errors="replace"))
    assert match is not None
    discovery = httpx.get(f"http://127.0.0.1:{match[1]}/.well-known/openid-configuration", timeout=10).json()
    up_port = free_port()
    upstream = procs.start(
        "cred-backend", [sys.executable, "-m", "bench.echo_backend", "--port", str(up_port)], client_core, up_port
    )
    procs.wait_listening(upstream)
    directory = tmp / "credentials"
    config = write_gateway_config(directory, f"http://127.0.0.1:{up_port}/mcp")
    with (config / f"{GROUP}.yaml").open("a") as f:
        f.write(_oauth_servers(f"http://127.0.0.1:{up_port}/mcp", discovery))
    token = gateway_credentials(directory / "data")
    store_secret(directory / "data", OAUTH_SECRET_REF, CLIENT_SECRETS[CC_CLIENT_ID])
    store_secret(directory / "data", OAUTH_CODE_SECRET_REF, CLIENT_SECRETS[CODE_CLIENT_ID])
    gateway = procs.start(
        "virtual-mcp-credentials", gateway_command(config, directory / "data", port), server_core, port
    )
    procs.wait_listening(gateway)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, gateway, "ready")
    headers = {**protocol.call_headers(protocol.MODERN), "Authorization": f"Bearer {token}"}
    targets = {"static": SERVER, "client_credentials": "echo-2lo", "authorization_code": "echo-3lo"}
    scripts: dict[str, Path] = {}
    for key, server in targets.items():
        url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{server}/server"
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            if key == "authorization_code":
                _connect(client, url)  # the user connects their account once, as in an IDE
            protocol.check_call(client, url, protocol.MODERN)  # the first call obtains the token
        scripts[key] = tmp / f"cred-{server}.lua"
        scripts[key].write_text(lua_script(protocol.call_body(protocol.MODERN), headers, [], protocol.ECHO_TEXT))
    # The three in turn, short runs, CREDENTIAL_ROUNDS times: the latency at c=1 drifts by tenths of a millisecond
    # over minutes on a shared VM, more than the difference sought, so each OAuth run is compared with the static
    # run of its own round and the median of those paired differences is the answer.
    rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in targets}
    for _ in range(CREDENTIAL_ROUNDS):
        for key, server in targets.items():
            url = f"http://127.0.0.1:{port}/mcp-server/{GROUP}/{server}/server"
            rounds[key].append(run_wrk(wrk, url, scripts[key], 1, CREDENTIAL_RUN_S, client_core).as_dict())
    out: dict[str, Any] = {"rounds": CREDENTIAL_ROUNDS, "run_s": CREDENTIAL_RUN_S}
    for key, runs in rounds.items():
        p50s = [run["p50_ms"] for run in runs]
        out[key] = {"p50_ms": _median(p50s), "p50_ms_rounds": p50s, "errors": sum(run["errors"] for run in runs)}
    static = out["static"]["p50_ms_rounds"]
    for key, added in (("client_credentials", "added_p50_ms"), ("authorization_code", "added_p50_ms_3lo")):
        paired = [
            b - a for a, b in zip(static, out[key]["p50_ms_rounds"], strict=True) if a is not None and b is not None
        ]
        out[added] = round(statistics.median(paired), 3) if paired else None
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _oauth_servers(backend: str, discovery: dict[str, Any]) -> str:
    """Two more servers in front of `backend`: one with OAuth client credentials, one with per-user OAuth."""
    from tests.oauth_server import CC_CLIENT_ID, CODE_CLIENT_ID

    common = f"    type: integration/mcp-server/remote\n    url: {backend}\n    authorized_subjects: [team:bench]\n"
    return (
        f"  - name: echo-2lo\n{common}"
        "    auth_data:\n"
        "      type: oauth2\n"
        "      grant_type: client_credentials\n"
        f"      token_url: {discovery['token_endpoint']}\n"
        f"      client_id: {CC_CLIENT_ID}\n"
        f"      client_secret: {OAUTH_SECRET_REF}\n"
        "      scopes: [mcp:read]\n"
        f"  - name: echo-3lo\n{common}"
        "    auth_data:\n"
        "      type: oauth2\n"
        "      grant_type: authorization_code\n"
        f"      authorization_url: {discovery['authorization_endpoint']}\n"
        f"      token_url: {discovery['token_endpoint']}\n"
        f"      issuer: {discovery['issuer']}\n"
        f"      client_id: {CODE_CLIENT_ID}\n"
        f"      client_secret: {OAUTH_CODE_SECRET_REF}\n"
        "      scopes: [mcp:tools]\n"
    )


def _connect(client: httpx.Client, url: str) -> None:
    """Connect the bench user's account for a per-user OAuth server: the gateway answers the first call with a URL
    elicitation (its consent link); opening it, signing in to the gateway with the bench user's token and
    confirming, as a browser would, ends on the gateway's "Connected" page (the test authorization server logs its
    one account in without a form)."""
    from tests.oauth.browser import consent_form

    response = client.post(
        url, content=protocol.call_body(protocol.MODERN, 3), headers=protocol.call_headers(protocol.MODERN)
    )
    message = protocol.parse_response(response, 3)
    error = message.get("error") or {}
    elicitations = (error.get("data") or {}).get("elicitations") or []
    if error.get("code") != -32042 or not elicitations:
        raise protocol.ProtocolError(f"expected a consent link, got {json.dumps(message)[:300]}")
    with httpx.Client(follow_redirects=True, max_redirects=12, timeout=30) as browser:
        # The link opens the gateway's sign-in page; the user signs in with their gateway token and confirms.
        page = browser.get(elicitations[0]["url"])
        if page.status_code == 200 and "<form" in page.text:
            form = consent_form(page.text, str(page.url))
            credential = str(client.headers["authorization"]).removeprefix("Bearer ")
            page = browser.post(form.action, data={**form.fields, "credential": credential})
    if page.status_code != 200 or "Connected" not in page.text:
        raise protocol.ProtocolError(f"connecting the account failed: HTTP {page.status_code}: {page.text[:300]}")


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
            f"| tools/call, OAuth client credentials (cached token) vs static header, c=1, {cred.get('rounds', 1)} "
            f"rounds, median of the paired differences | p50 "
            f"{cred['client_credentials']['p50_ms']} ms vs {cred['static']['p50_ms']} ms "
            f"({cred['added_p50_ms']:+} ms) | within 0.2 ms |"
        )
        if "authorization_code" in cred:
            rows.append(
                f"| tools/call, per-user OAuth (3LO, cached token) vs static header, c=1, {cred.get('rounds', 1)} "
                f"rounds, median of the paired differences | p50 "
                f"{cred['authorization_code']['p50_ms']} ms vs {cred['static']['p50_ms']} ms "
                f"({cred['added_p50_ms_3lo']:+} ms) | within 0.2 ms |"
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
    held = results.get("principal_sessions")
    if held:
        measured = f"{held['rss_mb_with_sessions']} MB ({held['rss_mb_warm']} MB warm before them; "
        measured += f"{held['per_principal_kb']} KB per principal, {held['upstream_sessions']} upstream sessions)"
        rows.append(
            f"| gateway RSS with {held['principals']} principals holding live upstream sessions | {measured} | "
            "<= 200 MB |"
        )
    start = results.get("startup")
    if start:
        measured = f"median {start['median_s']} s of {start['ready_s']}"
        rows.append(f"| `serve` ready with {start['servers']} servers | {measured} | < 2 s |")
    if results.get("scale"):
        rows += scale.markdown(results["scale"])
    return "\n".join(rows)

"""`virtual-mcp audit` on a million records: correctness and answer time.

Generates a deterministic trail of `--records` events (default 1,000,000) through the gateway's own sink
(`AuditStore.write`, batches of 10,000), then runs the questions a security team asks, each as the operator does:
`virtual-mcp audit ... --format json` in a fresh process. Every answer is compared with the answer computed from the
generated events in Python; the wall time of each command (process start included) and of the query alone
(in-process, best of 5) are reported. Exit status 1 if any answer is wrong.

    .venv/bin/python -m bench.audit_query [--records N] [--keep DIR]

Writes `bench/results/audit_query.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from virtual_mcp.audit import AuditEvent
from virtual_mcp.vault import Database
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore

RESULTS = Path(__file__).parent / "results"
USERS = [f"user{i:03d}@northwind.example" for i in range(200)]
TEAMS = ["platform", "sre", "support", "data", "security"]
SERVERS = [f"group{g}/server{s}" for g in range(5) for s in range(8)]
TOOLS = ["list_repos", "get_issue", "create_issue", "delete_repo", "search", "run_query"]
ACCOUNTS = ["ci", "copilot-runtime", "nightly"]
START = 1_790_000_000.0  # a fixed origin so every run generates the same trail
STEP = 0.5  # seconds between records: a million records span about six days


def generate(i: int) -> AuditEvent:
    if i % 10 == 9:
        account = ACCOUNTS[i % len(ACCOUNTS)]
        subject, kind, name, teams = f"virtualaccount:{account}", "virtualaccount", account, ()
    else:
        user = USERS[(i * 7) % len(USERS)]
        subject, kind, name = f"user:{user}", "user", user
        teams = (TEAMS[(i * 7) % len(USERS) % len(TEAMS)],)
    outcome = "denied" if i % 50 == 0 else "failed" if i % 97 == 0 else "allowed"
    return AuditEvent(
        ts=START + i * STEP,
        request_id=f"{i:016x}",
        subject=subject,
        kind=kind,
        name=name,
        teams=teams,
        endpoint="/mcp",
        method="tools/call",
        server=SERVERS[i % len(SERVERS)],
        tool=TOOLS[(i // 3) % len(TOOLS)],
        outcome=outcome,
        error=None if outcome == "allowed" else f"{outcome} #{i}",
        latency_ms=float(i % 400) / 10,
        auth_mode="header",
    )


async def fill(data_dir: Path, records: int) -> float:
    started = time.perf_counter()
    async with Database.open(data_dir) as db:
        store = AuditStore(db)
        for first in range(0, records, 10_000):
            await store.write([generate(i) for i in range(first, min(first + 10_000, records))])
    return time.perf_counter() - started


def questions(records: int) -> list[tuple[str, list[str], AuditQuery, Callable[[AuditEvent], bool]]]:
    end = START + records * STEP
    hour = 3600.0
    user = USERS[42]
    return [
        ("newest 100", [], AuditQuery(), lambda e: True),
        ("one user, all time", ["--user", user], AuditQuery(user=user), lambda e: e.name == user),
        (
            "one user, last 24 h",
            ["--user", user, "--since", _iso(end - 24 * hour)],
            AuditQuery(user=user, since=end - 24 * hour),
            lambda e: e.name == user and e.ts >= end - 24 * hour,
        ),
        ("one team", ["--team", "sre"], AuditQuery(team="sre"), lambda e: "sre" in e.teams),
        (
            "one team, a 1 h window",
            ["--team", "security", "--since", _iso(START + 10 * hour), "--until", _iso(START + 11 * hour)],
            AuditQuery(team="security", since=START + 10 * hour, until=START + 11 * hour),
            lambda e: "security" in e.teams and START + 10 * hour <= e.ts < START + 11 * hour,
        ),
        (
            "one virtual account",
            ["--virtual-account", "nightly"],
            AuditQuery(virtual_account="nightly"),
            lambda e: e.subject == "virtualaccount:nightly",
        ),
        (
            "who called delete_repo",
            ["--tool", "delete_repo"],
            AuditQuery(tool="delete_repo"),
            lambda e: e.tool == "delete_repo",
        ),
        (
            "denials on one server",
            ["--server", "group1/server2", "--outcome", "denied"],
            AuditQuery(server="group1/server2", outcome="denied"),
            lambda e: e.server == "group1/server2" and e.outcome == "denied",
        ),
        (
            "one request id",
            ["--request-id", f"{records // 2:016x}"],
            AuditQuery(request_id=f"{records // 2:016x}"),
            lambda e: e.request_id == f"{records // 2:016x}",
        ),
        (
            "failures, 1000 newest",
            ["--outcome", "failed", "--limit", "1000"],
            AuditQuery(outcome="failed", limit=1000),
            lambda e: e.outcome == "failed",
        ),
    ]


def _iso(ts: float) -> str:
    from virtual_mcp.audit_report import iso

    return iso(ts)


def expected(records: int, match: Callable[[AuditEvent], bool], limit: int) -> list[str]:
    out: list[str] = []
    for i in range(records - 1, -1, -1):  # newest first, as the query answers
        event = generate(i)
        if match(event):
            out.append(event.request_id)
            if len(out) == limit:
                break
    return out


async def in_process(data_dir: Path, query: AuditQuery) -> float:
    async with Database.open(data_dir) as db:
        store = AuditStore(db)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            await store.query(query)
            best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="use (and keep) this data directory; reuses a filled one")
    args = parser.parse_args()
    cli = Path(sys.executable).with_name("virtual-mcp")
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.keep or Path(scratch)
        fill_seconds = 0.0
        if not (data_dir / "gateway.db").exists():
            fill_seconds = anyio.run(fill, data_dir, args.records)
            print(f"generated {args.records:,} records in {fill_seconds:.1f} s", file=sys.stderr)
        rows = []
        wrong = 0
        for label, flags, query, match in questions(args.records):
            started = time.perf_counter()
            done = subprocess.run(
                [
                    str(cli),
                    "audit",
                    "--data-dir",
                    str(data_dir),
                    "--format",
                    "json",
                    "--limit",
                    str(query.limit),
                    *flags,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - started
            got = [json.loads(line)["request_id"] for line in done.stdout.splitlines()]
            want = expected(args.records, match, query.limit)
            correct = done.returncode == 0 and got == want
            wrong += not correct
            query_seconds = anyio.run(in_process, data_dir, query)
            rows.append(
                {
                    "question": label,
                    "arguments": " ".join(flags),
                    "records_returned": len(got),
                    "correct": correct,
                    "cli_wall_ms": round(wall * 1000, 1),
                    "query_ms": round(query_seconds * 1000, 2),
                }
            )
    table = [
        f"`virtual-mcp audit` on {args.records:,} records (answers checked against the generator; CLI wall time "
        "includes process start)",
        "",
        "| question | returned | correct | CLI wall ms | query ms |",
        "|---|---:|:---:|---:|---:|",
        *(
            f"| {r['question']} | {r['records_returned']} | {'yes' if r['correct'] else '**NO**'} | "
            f"{r['cli_wall_ms']} | {r['query_ms']} |"
            for r in rows
        ),
    ]
    markdown = "\n".join(table)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    result = {"records": args.records, "fill_seconds": round(fill_seconds, 1), "rows": rows, "markdown": markdown}
    (RESULTS / "audit_query.json").write_text(json.dumps(result, indent=2) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

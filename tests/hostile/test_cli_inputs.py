"""Hostile and mistaken CLI input: each command is refused with its exit code and a message that says what is
wrong, writes nothing (no token, no new data directory), and what was stored before is intact.

Most cases run `main()` in this process (fast); the last test runs them as real processes beside a running
`serve` on the same data directory, which keeps serving.
"""

from __future__ import annotations

import io
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest

from tests.backends import build_lab
from tests.ports import free_ports
from tests.processes import cli, gateway_process, tools_list
from tests.sensitive import mark
from tests.store_mode import state_database
from tests.support import LOCAL_USER, serve, write_config
from virtual_mcp.cli import main
from virtual_mcp.vault.db import DB_FILE_NAME

USER = "alice@x.example"

# (arguments after the command, exit code, what stderr must say); DATA stands for the prepared data directory.
CASES: list[tuple[str, list[str], int, str]] = [
    ("duration zero", ["token", "create", "--user", USER, "--expires-in", "0"], 2, "invalid duration '0'"),
    ("duration unit", ["token", "create", "--user", USER, "--expires-in", "10y"], 2, "invalid duration '10y'"),
    ("duration float", ["token", "create", "--user", USER, "--expires-in", "1.5d"], 2, "invalid duration '1.5d'"),
    ("duration huge", ["token", "create", "--user", USER, "--expires-in", "9" * 20 + "d"], 2, "at most 3650d"),
    ("duration negative", ["token", "create", "--user", USER, "--expires-in", "-1d"], 2, "expected one argument"),
    ("description long", ["token", "create", "--user", USER, "--description", "x" * 201], 2, "at most 200"),
    ("description ESC", ["token", "create", "--user", USER, "--description", "\x1b[2J"], 2, "control characters"),
    ("description newline", ["token", "create", "--user", USER, "--description", "a\nb"], 2, "control characters"),
    ("description C1", ["token", "create", "--user", USER, "--description", "a\x9bb"], 2, "control characters"),
    ("user and account", ["token", "create", "--user", USER, "--virtual-account", "ci"], 2, "not allowed with"),
    ("no subject", ["token", "create"], 2, "one of the arguments --user --virtual-account is required"),
    ("revoke unknown", ["token", "revoke", "nope"], 1, "no active token with id 'nope'"),
    ("revoke SQL-looking", ["token", "revoke", "' OR 1=1 --"], 1, "no active token with id"),
    ("revoke empty id", ["token", "revoke", ""], 1, "no active token with id ''"),
    ("secret ref two parts", ["secrets", "set", "a:b"], 2, "expected TENANT:GROUP:KEY"),
    ("secret ref traversal", ["secrets", "set", "../../x:y:z"], 2, "expected TENANT:GROUP:KEY"),
    ("secret ref empty part", ["secrets", "set", "a::z"], 2, "expected TENANT:GROUP:KEY"),
    ("secret ref scheme", ["secrets", "set", "http://a:b:c"], 2, "expected TENANT:GROUP:KEY"),
    ("secret empty value", ["secrets", "set", "a:b:c"], 2, "refusing to store an empty secret"),
    ("secret delete missing", ["secrets", "delete", "a:b:c"], 1, "no secret 'a:b:c'"),
    ("secret delete bad ref", ["secrets", "delete", "a:b"], 2, "expected TENANT:GROUP:KEY"),
    ("audit time words", ["audit", "--since", "yesterday"], 2, "invalid time 'yesterday'"),
    ("audit until first", ["audit", "--since", "2026-01-02", "--until", "2026-01-01"], 2, "--until is before"),
    ("audit limit zero", ["audit", "--limit", "0"], 2, "--limit must be a positive number"),
    ("audit limit huge", ["audit", "--limit", "9" * 20], 2, "at most 1000000"),
    ("audit limit text", ["audit", "--limit", "ten"], 2, "invalid int value: 'ten'"),
    ("audit format", ["audit", "--format", "xml"], 2, "invalid choice: 'xml'"),
    ("audit outcome", ["audit", "--outcome", "maybe"], 2, "invalid choice: 'maybe'"),
    ("audit server form", ["audit", "--server", "nogroup"], 2, "expected GROUP/SERVER, got 'nogroup'"),
    ("audit server spaces", ["audit", "--server", "a /b"], 2, "expected GROUP/SERVER"),
    ("audit two subjects", ["audit", "--user", USER, "--virtual-account", "ci"], 2, "not both"),
    ("disconnect form", ["connections", "disconnect", "--user", USER, "noslash"], 2, "expected GROUP/SERVER"),
    ("disconnect unknown", ["connections", "disconnect", "--user", USER, "g/s"], 1, "has no connection to g/s"),
    ("revoke bad config", ["revoke", "--user", USER, "--config", "/nonexistent"], 2, "does not exist"),
    ("unknown command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ("bad log level", ["--log-level", "loud", "token", "list"], 2, "invalid choice: 'loud'"),
    ("serve port range", ["serve", "--port", "99999"], 2, "'99999' is not a TCP port"),
    ("serve port text", ["serve", "--port", "http"], 2, "'http' is not a TCP port"),
    ("check missing dir", ["check", "--config", "/nonexistent"], 2, "configuration directory does not exist"),
]
# Commands that read what a gateway wrote, given a directory without its database (a typo in --data-dir): refused,
# and the directory is not created.
NO_DATABASE = [
    ["token", "list"],
    ["token", "revoke", "abc"],
    ["secrets", "list"],
    ["secrets", "delete", "a:b:c"],
    ["connections", "list", "--user", USER],
    ["connections", "disconnect", "--user", USER, "g/s"],
    ["keys", "rotate"],
    ["audit"],
    ["revoke", "--user", USER],
]


def run(args: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A data directory with one token and one secret, as a gateway's would have."""
    directory = tmp_path / "data"
    assert run(["token", "create", "--user", USER, "--data-dir", str(directory)], capsys)[0] == 0
    assert run(["secrets", "set", "t:g:k", "--data-dir", str(directory)], capsys, stdin="v")[0] == 0
    return directory


def intact(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, listing, _ = run(["token", "list", "--data-dir", str(data)], capsys)
    assert code == 0 and listing.count("active") == 1, listing
    assert run(["secrets", "list", "--data-dir", str(data)], capsys)[1] == "tfy-secret://t:g:k\n"
    with sqlite3.connect(data / DB_FILE_NAME) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    raw.close()


@pytest.mark.parametrize(("args", "code", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cli_input_is_refused_precisely(
    data: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, problem: str
) -> None:
    options = [] if args[0] in ("check", "frobnicate", "--log-level", "serve") else ["--data-dir", str(data)]
    got, out, err = run([*args, *options], capsys)
    assert (got, problem in err) == (code, True), err
    assert "Traceback" not in err and not out.strip()
    intact(data, capsys)


@pytest.mark.embedded_only("a data directory without its SQLite file")
@pytest.mark.parametrize("args", NO_DATABASE, ids=[" ".join(a[:2]) for a in NO_DATABASE])
def test_a_data_directory_without_a_database_is_refused_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    typo = tmp_path / ".virtul-mcp"
    code, _, err = run([*args, "--data-dir", str(typo)], capsys)
    assert code == 2 and f"no gateway database in {typo}" in err
    assert not typo.exists()


@pytest.mark.embedded_only("the data directory's SQLite file")
def test_a_file_as_data_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    code, _, err = run(["token", "create", "--user", USER, "--data-dir", str(path)], capsys)
    assert code == 1 and f"the data directory {path} is not a directory" in err
    assert path.read_text() == "not a directory"


async def test_bad_commands_beside_a_running_serve_leave_it_serving(tmp_path: Path) -> None:
    [port] = free_ports(1)
    data = tmp_path / "data"
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_config(tmp_path / "servers.d", {"echo": backend.url})
        code, alice, _ = await cli("token", "create", "--user", LOCAL_USER, "--data-dir", str(data))
        assert code == 0
        mark(alice.strip())
        broken = tmp_path / "broken.d"
        broken.mkdir()
        (broken / "g.yaml").write_text("type: nope\n")
        args = ["--config", str(config), "--port", str(port), "--data-dir", str(data)]
        async with gateway_process(args), httpx.AsyncClient() as http:
            for bad in (
                ["token", "create", "--user", USER, "--expires-in", "9" * 20 + "d"],
                ["audit", "--limit", "9" * 20],
                ["keys", "rotate", "--data-dir", str(tmp_path / "elsewhere")],
                ["serve", "--config", str(broken), "--port", str(port)],  # a broken config: refused before the lock
                ["serve", "--config", str(config), "--port", "0"],  # the data directory is in use
            ):
                options = [] if "--data-dir" in bad else ["--data-dir", str(data)]
                code, _, err = await cli(*bad, *options)
                assert code == 2 and "Traceback" not in err, err
            assert "another virtual-mcp serve" in err  # the last one: the running gateway holds the lock
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
            assert ready.status_code == 200, ready.text
            answer = await tools_list(f"http://127.0.0.1:{port}", alice.strip())
            assert answer.status_code == 200 and "lab__echo__echo" in answer.text
        async with state_database(data) as db:
            row = await db.fetchone("SELECT count(*) FROM tokens")
            assert row is not None and row[0] == 1
        if (data / DB_FILE_NAME).exists():
            with sqlite3.connect(data / DB_FILE_NAME) as raw:
                assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            raw.close()

"""`virtual-mcp db upgrade`, `db copy` and `audit prune`: the commands that move and trim a gateway's database.

Real databases only: the embedded SQLite file and a PostgreSQL server (tests/services.py)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from tests.services import Postgres
from tests.test_cli import run
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.audit import AuditEvent
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore
from virtual_mcp.vault.copy import TABLES
from virtual_mcp.vault.db import SCHEMA_VERSION, Database
from virtual_mcp.vault.engines import DATABASE_URL_ENV
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore
from virtual_mcp.vault.postgres import PostgresDatabase
from virtual_mcp.vault.revocations import RevocationStore

DAY = 86400.0


def event(ts: float, team: str = "platform") -> AuditEvent:
    return AuditEvent(
        ts=ts,
        request_id=f"r-{ts}",
        subject="user:alice@x.example",
        kind="user",
        name="alice@x.example",
        teams=(team,),
        endpoint="/mcp",
        method="tools/call",
        server="g/github",
        tool="search",
        outcome="ok",
        latency_ms=1.0,
    )


async def embedded_install(data: Path) -> str:
    """A gateway's data directory with rows in every table; the gateway token it holds."""
    keys = LocalKeyProvider.load(data)
    async with Database.open(data) as db:
        _, token = await TokenStore(db).create(PrincipalKind.USER, "alice@x.example")
        await SecretStore(db, keys).set(SecretRef("t", "g", "k"), "s3cret-0123456789")
        await OAuthTokenStore(db, keys).put("g/github", "user:alice@x.example", {"access_token": "at-0123456789"})
        await RevocationStore(db).add("user:mallory@x.example", time.time())
        await AuditStore(db).write([event(time.time() - i) for i in range(5)])
    return token


def test_an_embedded_install_moves_to_postgres_whole(
    tmp_path: Path, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db copy --from sqlite:DIR --to postgresql://...`: every table, every row, still sealed and still usable with
    the same master key: the token verifies, the secret and the token set open, the trail answers, and the next
    revocation and audit ids follow the copied ones."""
    data = tmp_path / "data"
    token = anyio.run(embedded_install, data)
    url = anyio.run(fresh_postgres, postgres)
    code, out, err = run(["db", "copy", "--from", f"sqlite:{data}", "--to", url, "--data-dir", str(data)], capsys)
    assert code == 0, err
    assert "tokens 1" in out and "audit 5" in out and "audit_teams 5" in out and "VIRTUAL_MCP_MASTER_KEY" in out

    async def check() -> None:
        keys = LocalKeyProvider.load(data, create=False)
        async with PostgresDatabase.open(url) as db:
            assert await TokenStore(db).verify(token) is not None
            assert await SecretStore(db, keys).get(SecretRef("t", "g", "k")) == "s3cret-0123456789"
            stored = await OAuthTokenStore(db, keys).get_versioned("g/github", "user:alice@x.example")
            assert stored == ({"access_token": "at-0123456789"}, 1)
            assert [r.subject for r in await RevocationStore(db).since(0)] == ["user:mallory@x.example"]
            assert (await RevocationStore(db).add("user:eve@x.example", time.time())).id == 2
            trail = await AuditStore(db).query(AuditQuery(team="platform"))
            assert len(trail) == 5
            copy = await AuditStore(db).query(AuditQuery(method="db copy"))
            assert len(copy) == 1 and copy[0].subject.startswith("operator:")  # the copy is on the record
            await AuditStore(db).write([event(time.time())])
            assert len(await AuditStore(db).query(AuditQuery(team="platform"))) == 6

    anyio.run(check)
    # Into a database that holds anything: refused, nothing merged.
    code, _, err = run(["db", "copy", "--from", f"sqlite:{data}", "--to", url, "--data-dir", str(data)], capsys)
    assert code == 2 and "already holds" in err and "nothing is merged" in err


def test_every_table_of_the_schema_is_copied(tmp_path: Path) -> None:
    """A table added to the schema without a place in `db copy` would be left behind silently: this fails first."""

    async def tables() -> set[str]:
        async with Database.open(tmp_path) as db:
            rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(r[0]) for r in rows}

    assert anyio.run(tables) - {"schema_version"} == set(TABLES)


def test_db_copy_refuses_what_it_cannot_do(
    tmp_path: Path, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    url = anyio.run(fresh_postgres, postgres)
    missing = tmp_path / "nothing-here"
    code, _, err = run(["db", "copy", "--from", f"sqlite:{missing}", "--to", url], capsys)
    assert code == 2 and "no gateway database in" in err and not missing.exists()
    code, _, err = run(
        ["db", "copy", "--from", url, "--to", url.replace("postgresql://", "postgresql://u:pw@")], capsys
    )
    assert code != 0 and "pw" not in err
    code, _, err = run(["db", "copy", "--from", url, "--to", url], capsys)
    assert code == 2 and "same database" in err
    code, _, err = run(["db", "copy", "--from", "mysql://u:hunter2@h/d", "--to", url], capsys)
    assert code == 2 and "unsupported database URL scheme" in err and "hunter2" not in err


def test_db_upgrade_names_the_schema_it_leaves(
    tmp_path: Path, postgres: Postgres, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # this test names its databases itself
    url = anyio.run(fresh_postgres, postgres)
    code, out, _ = run(["db", "upgrade", "--database-url", url], capsys)
    assert code == 0 and f"schema version {SCHEMA_VERSION}" in out
    code, out, _ = run(["db", "upgrade", "--data-dir", str(tmp_path)], capsys)
    assert code == 0 and f"schema version {SCHEMA_VERSION}" in out and str(tmp_path) in out


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_audit_prune_deletes_what_is_older_and_records_that_it_did(
    where: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # this test names its databases itself
    state = ["--data-dir", str(tmp_path)]
    if where == "postgres":
        state += ["--database-url", anyio.run(fresh_postgres, request.getfixturevalue("postgres"))]
    now = time.time()

    async def seed() -> None:
        async with (
            Database.open(tmp_path) if where == "sqlite" else PostgresDatabase.open(state[-1])  # type: ignore[attr-defined]
        ) as db:
            await AuditStore(db).write([event(now - 100 * DAY), event(now - 40 * DAY), event(now - DAY)])

    anyio.run(seed)
    code, out, err = run(["audit", "prune", "--before", "30d", *state], capsys)
    assert code == 0 and "deleted 2 audit event(s)" in out, err
    code, out, _ = run(["audit", "--format", "json", "--team", "platform", *state], capsys)
    assert code == 0 and out.count('"tools/call"') == 1  # the team index lost the pruned rows too
    code, out, _ = run(["audit", "--method", "audit prune", "--format", "json", *state], capsys)
    assert code == 0 and '"deleted": 2' in out


def test_audit_prune_refuses_what_would_surprise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # the embedded database's own refusals
    state = ["--data-dir", str(tmp_path)]
    code, _, err = run(["audit", "prune", *state], capsys)
    assert code == 2 and "needs --before" in err
    code, _, err = run(["audit", "prune", "--before", "2999-01-01", *state], capsys)
    assert code == 2 and "in the future" in err
    code, _, err = run(["audit", "prune", "--before", "30d", "--user", "alice@x.example", *state], capsys)
    assert code == 2 and "--user is for queries" in err
    code, _, err = run(["audit", "--before", "30d", *state], capsys)
    assert code == 2 and "--before is for `audit prune`" in err
    code, _, err = run(["audit", "prune", "--before", "30d", *state], capsys)
    assert code == 2 and "no gateway database" in err

"""The stores on either engine: the embedded SQLite database and PostgreSQL (a real server, tests/services.py) keep
and answer the same: gateway tokens, sealed secrets and OAuth token sets, revocations, the audit trail. Writers on
two connections (two replicas) never step on each other; nothing secret is stored in plain text."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.services import Postgres
from virtual_mcp.audit import AuditEvent
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import Database, DatabaseError, LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore
from virtual_mcp.vault.db import SCHEMA_VERSION
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore
from virtual_mcp.vault.postgres import BASE_VERSION, PostgresDatabase, numbered
from virtual_mcp.vault.revocations import RevocationStore
from virtual_mcp.vault.sql import SqlDatabase

ENGINES = ["sqlite", "postgres"]


async def fresh_postgres(server: Postgres) -> str:
    """A new, empty database in the test process's server; its URL."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str | Path]]:
    """(engine, where its database is): a directory for SQLite, a URL for PostgreSQL."""
    if request.param == "sqlite":
        yield "sqlite", tmp_path / "data"
    else:
        yield "postgres", await fresh_postgres(request.getfixturevalue("postgres"))


def opened(engine: tuple[str, str | Path]) -> AsyncIterator[SqlDatabase]:
    kind, where = engine
    if kind == "sqlite":
        return Database.open(Path(where))  # type: ignore[return-value]
    return PostgresDatabase.open(str(where))  # type: ignore[return-value]


async def test_gateway_tokens(engine: tuple[str, str | Path]) -> None:
    async with opened(engine) as db:  # type: ignore[attr-defined]
        store = TokenStore(db)
        info, token = await store.create(PrincipalKind.USER, "Alice@X.example", description="laptop")
        assert (await store.verify(token)) is not None and info.name == "alice@x.example"
        assert await store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        other, _ = await store.create(PrincipalKind.USER, "alice@x.example")
        assert await store.count_subject(PrincipalKind.USER, "ALICE@x.example") == 2
        assert await store.revoke(info.id) and not await store.revoke(info.id)
        assert await store.verify(token) is None
        assert await store.revoke_subject(PrincipalKind.USER, "alice@x.example") == 1  # the other one
        assert [t.id for t in await store.list(include_revoked=True)] == [info.id, other.id]
        assert await store.list() == []
        row = await db.fetchone("SELECT secret_hash FROM tokens WHERE id = ?", (info.id,))
        assert row is not None and token.rsplit("_", 1)[1].encode() not in bytes(row["secret_hash"])


async def test_sealed_secrets_and_oauth_tokens(engine: tuple[str, str | Path], tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path / "keys")
    async with opened(engine) as db:  # type: ignore[attr-defined]
        ref = SecretRef("northwind", "github", "client_secret")
        secrets_store = SecretStore(db, keys)
        await secrets_store.set(ref, "s3cret-value-0123456789")
        await secrets_store.set(ref, "s3cret-value-9876543210")  # replaced in place
        assert await secrets_store.get(ref) == "s3cret-value-9876543210"
        assert await secrets_store.list_refs() == [ref]
        tokens = OAuthTokenStore(db, keys)
        record = {"access_token": "at-0123456789abcdef", "refresh_token": "rt-0123456789abcdef", "expires_in": 60}
        await tokens.put("g/github", "user:alice@x", record)
        assert await tokens.get("g/github", "user:alice@x") == record
        assert await tokens.accounts("user:alice@x") == ["g/github"]
        stored = b"".join(bytes(r[0]) for r in await db.fetchall("SELECT envelope FROM oauth_tokens"))
        stored += b"".join(bytes(r[0]) for r in await db.fetchall("SELECT envelope FROM secrets"))
        for value in (b"s3cret-value", b"at-0123456789abcdef", b"rt-0123456789abcdef"):
            assert value not in stored  # sealed, never in plain text
        assert await tokens.delete("g/github", "user:alice@x") and await tokens.get("g/github", "user:alice@x") is None


async def test_an_oauth_token_set_is_written_only_over_the_version_its_writer_read(
    engine: tuple[str, str | Path], tmp_path: Path
) -> None:
    """The fence of a token refresh: a conditional write (`expect`) lands only if the row is still at the version the
    writer read (0: no row yet), so a writer that fell behind never overwrites what another wrote since."""
    keys = LocalKeyProvider.load(tmp_path / "keys")
    async with opened(engine) as db:  # type: ignore[attr-defined]
        tokens = OAuthTokenStore(db, keys)
        first = await tokens.put("g/s", "user:a", {"access_token": "one"}, expect=0)
        assert first == 1
        assert await tokens.put("g/s", "user:a", {"access_token": "late"}, expect=0) is None  # not absent any more
        assert await tokens.put("g/s", "user:a", {"access_token": "two"}, expect=1) == 2
        assert await tokens.put("g/s", "user:a", {"access_token": "stale"}, expect=1) is None
        assert await tokens.get_versioned("g/s", "user:a") == ({"access_token": "two"}, 2)
        assert await tokens.put("g/s", "user:a", {"access_token": "three"}) == 3  # unconditional: still counted
        assert await tokens.get_versioned("g/s", "user:a") == ({"access_token": "three"}, 3)


async def test_revocations_and_the_audit_trail(engine: tuple[str, str | Path]) -> None:
    async with opened(engine) as db:  # type: ignore[attr-defined]
        revocations = RevocationStore(db)
        first = await revocations.add("user:alice@x", 100.0)
        second = await revocations.add("user:bob@x", 200.0)
        assert [r.subject for r in await revocations.since(0)] == ["user:alice@x", "user:bob@x"]
        assert [r.id for r in await revocations.since(first.id)] == [second.id]
        audit = AuditStore(db)
        events = [
            AuditEvent(
                float(i),
                f"r{i}",
                "user:alice@x",
                "user",
                "alice@x",
                ("platform",),
                "/mcp",
                "tools/call",
                "g/github",
                "list_issues",
                detail={"n": i},
            )
            for i in range(5)
        ]
        await audit.write(events[:3])
        await audit.write(events[3:])
        found = await audit.query(AuditQuery(user="alice@x", limit=10))
        assert [e.request_id for e in found] == ["r4", "r3", "r2", "r1", "r0"] and found[0].detail == {"n": 4}
        assert [e.request_id for e in await audit.query(AuditQuery(team="platform", since=2.0, limit=10))] == [
            "r4",
            "r3",
            "r2",
        ]
        assert await audit.acted("user:alice@x") and not await audit.acted("user:bob@x")


async def test_two_writers_never_step_on_each_other(engine: tuple[str, str | Path]) -> None:
    """Two connections (on PostgreSQL, as two replicas would hold) append audit batches at once: every event is
    kept, each under its own id."""
    async with opened(engine) as one, opened(engine) as two:  # type: ignore[attr-defined]

        async def append(db: SqlDatabase, writer: str) -> None:
            store = AuditStore(db)
            for batch in range(10):
                await store.write(
                    [
                        AuditEvent(float(batch), f"{writer}-{batch}-{i}", "user:a@x", "user", "a@x", (), "/mcp", "m")
                        for i in range(5)
                    ]
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(append, one, "one")
            tg.start_soon(append, two, "two")
        rows = await one.fetchall("SELECT id, request_id FROM audit")
        assert len(rows) == 100 and len({r["id"] for r in rows}) == 100


def test_placeholders_are_numbered_in_order() -> None:
    assert numbered("SELECT a FROM t WHERE b = ? AND c = ?") == "SELECT a FROM t WHERE b = $1 AND c = $2"
    assert numbered("SELECT 1") == "SELECT 1"


async def test_a_database_url_never_shows_its_password(postgres: Postgres) -> None:
    url = postgres.url.replace("postgres@", "postgres:hunter2-pass@")
    async with PostgresDatabase.open(url) as db:
        assert "hunter2-pass" not in str(db.path) and "***" in str(db.path)


async def test_a_postgres_schema_of_another_version_is_refused(postgres: Postgres) -> None:
    url = await fresh_postgres(postgres)
    async with PostgresDatabase.open(url) as db:
        version = await db.schema_version()
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (version + 1,))
    with pytest.raises(DatabaseError) as newer:
        await PostgresDatabase.connect(url)
    assert f"schema version {version + 1}, newer than this gateway's" in newer.value.message


async def test_an_older_postgres_schema_is_upgraded_only_when_asked(postgres: Postgres) -> None:
    """A fleet's schema changes when its operator runs `db upgrade`, not when one replica of a newer version starts:
    an older schema is refused (naming the command), then brought up to date by `upgrade=True`, rows kept."""
    url = await fresh_postgres(postgres)
    async with PostgresDatabase.open(url) as db, db.transaction() as tx:  # as a gateway of BASE_VERSION left it
        await tx.execute("ALTER TABLE oauth_tokens DROP COLUMN version")
        await tx.execute("DELETE FROM schema_version WHERE version > ?", (BASE_VERSION,))
        await tx.execute(
            "INSERT INTO oauth_tokens (server, account, envelope, updated_at) VALUES ('g/s', 'user:a', ?, 0)",
            (b"sealed",),
        )
    with pytest.raises(DatabaseError) as older:
        await PostgresDatabase.connect(url)
    assert "older than this gateway's" in older.value.message and "virtual-mcp db upgrade" in older.value.message
    async with PostgresDatabase.open(url, upgrade=True) as db:
        assert await db.schema_version() == SCHEMA_VERSION
        row = await db.fetchone("SELECT version FROM oauth_tokens WHERE server = 'g/s'")
        assert row is not None and row["version"] == 1

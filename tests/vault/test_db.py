from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from virtual_mcp.vault import Database, DatabaseError
from virtual_mcp.vault.db import SCHEMA_VERSION


async def test_creates_private_dir_and_file_with_schema(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with Database.open(data_dir) as db:
        assert await db.schema_version() == SCHEMA_VERSION
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
        tables = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        assert {"schema_version", "tokens", "secrets", "tokens_subject"} <= tables
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((data_dir / "gateway.db").stat().st_mode) == 0o600
    # Migrations are idempotent: reopening neither fails nor records a version twice.
    async with Database.open(data_dir) as db:
        rows = await db.fetchall("SELECT version FROM schema_version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


async def test_two_connections_see_each_others_writes(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as cli, Database.open(tmp_path) as server:
        async with cli.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES ('t', 'g', 'k', x'00', 1)"
            )
        assert await server.fetchone("SELECT 1 FROM secrets WHERE key = 'k'") is not None
        async with server.transaction() as tx:
            assert await tx.execute("DELETE FROM secrets") == 1
        assert await cli.fetchall("SELECT * FROM secrets") == []


async def test_reads_on_the_loop_see_other_connections_commits_and_write_nothing(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as cli, Database.open(tmp_path) as server:
        query = "SELECT key FROM secrets WHERE key = ?"
        assert server.read_now(query, ("k",)) is None
        async with cli.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES ('t', 'g', 'k', x'00', 1)"
            )
        row = server.read_now(query, ("k",))
        assert row is not None and row["key"] == "k"
        async with cli.transaction() as tx:
            await tx.execute("DELETE FROM secrets")
        assert server.read_now(query, ("k",)) is None  # the next read after a commit elsewhere sees it
        with pytest.raises(DatabaseError, match="cannot read"):
            server.read_now("DELETE FROM secrets")  # the reader is read-only


async def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as db:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES ('t', 'g', 'k', x'00', 1)"
                )
                raise RuntimeError("boom")
        with pytest.raises(DatabaseError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO no_such_table VALUES (1)")
        assert await db.fetchall("SELECT * FROM secrets") == []
        async with db.transaction() as tx:  # the connection is usable again
            await tx.execute("DELETE FROM secrets")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    async with Database.open(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "gateway.db") as raw:
        raw.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(DatabaseError, match="newer"):
        async with Database.open(tmp_path):
            pass


async def test_concurrent_writers_on_one_file_and_one_connection(tmp_path: Path) -> None:
    async def insert(db: Database, key: str) -> None:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES ('t', 'g', ?, x'00', 1)", (key,)
            )
            await anyio.lowlevel.checkpoint()  # let the other writers run while this transaction is open

    async with Database.open(tmp_path) as cli, Database.open(tmp_path) as server, anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(insert, cli if i % 2 else server, f"k{i}")
    async with Database.open(tmp_path) as db:
        row = await db.fetchone("SELECT COUNT(*) FROM secrets")
        assert row is not None and row[0] == 20

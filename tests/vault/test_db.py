from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from virtual_mcp.vault import Database, DatabaseError
from virtual_mcp.vault.db import DB_FILE_NAME, SCHEMA_VERSION


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


def other_process(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    """`sql` run by another process (a CLI command's connection: opened, used and closed)."""
    script = (
        "import sqlite3, sys, json\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "print(json.dumps(c.execute(sys.argv[2]).fetchall()))\n"
        "c.close()\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed script
        [sys.executable, "-c", script, str(data_dir / DB_FILE_NAME), sql], capture_output=True, text=True, check=True
    )
    return [tuple(row) for row in json.loads(done.stdout)]


async def test_a_second_connection_in_the_process_keeps_the_first_ones_lock(tmp_path: Path) -> None:
    """`serve` opens two connections. Opening the second must not drop the process's lock on the file, or the next
    CLI process to close its connection takes itself for the last user and deletes the -wal under the gateway."""
    async with Database.open(tmp_path) as gateway, Database.open(tmp_path) as audit_writer:
        assert other_process(tmp_path, "SELECT count(*) FROM secrets") == [(0,)]
        assert (tmp_path / f"{DB_FILE_NAME}-wal").exists()
        async with gateway.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES ('t', 'g', 'k', x'00', 1)"
            )
        other_process(tmp_path, "INSERT INTO revocations (subject, revoked_at) VALUES ('user:x@y.example', 1)")
        # Each side sees the other's write: nobody writes to a deleted WAL.
        assert other_process(tmp_path, "SELECT key FROM secrets") == [("k",)]
        assert gateway.read_now("SELECT count(*) FROM revocations")[0] == 1  # type: ignore[index]
        assert gateway.trust_problem() is None and audit_writer.trust_problem() is None
    with sqlite3.connect(tmp_path / DB_FILE_NAME) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    raw.close()


async def test_a_foreign_close_of_the_file_is_a_trust_problem(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as db:
        assert db.trust_problem() is None
        os.close(os.open(tmp_path / DB_FILE_NAME, os.O_RDONLY))  # what the old connect did: drops the lock
        problem = db.trust_problem()
        assert problem is not None and "lost its lock" in problem


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_a_removed_wal_or_shm_is_a_trust_problem(tmp_path: Path, suffix: str) -> None:
    async with Database.open(tmp_path) as db:
        (tmp_path / f"{DB_FILE_NAME}{suffix}").unlink()
        problem = db.trust_problem()
        assert problem is not None and f"{DB_FILE_NAME}{suffix} was removed" in problem


async def test_corruption_met_by_a_statement_is_remembered(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as db, db.transaction() as tx:
        rows = [("t", "g", f"k{i}", b"x" * 500, 1.0) for i in range(200)]
        await tx.executemany("INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES (?,?,?,?,?)", rows)
    path = tmp_path / DB_FILE_NAME
    with path.open("r+b") as f:  # the file's second half (the secrets' pages, written last) becomes garbage
        size = f.seek(0, 2)
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xa5" * (size - size // 2 // 4096 * 4096))
    async with Database.open(tmp_path) as db:
        with pytest.raises(DatabaseError, match="malformed"):
            await db.fetchall("SELECT sum(length(envelope)) FROM secrets")
        problem = db.trust_problem()
        assert problem is not None and "corrupt" in problem

"""The gateway's SQLite database: one aiosqlite connection, WAL, explicit transactions, versioned migrations.

Several processes (a running server and the CLI) may open the same file: every write runs in `BEGIN IMMEDIATE`
and waits up to `busy_timeout` for the other's write lock; readers are never blocked under WAL.

Two more connections are opened when first needed: a reader for the per-request lookups (`read_now`, on the event
loop: a small indexed read costs less there than a hop to a thread), and a writer for batches (`write_batch`, whose
whole transaction, rows and all, runs on a worker thread: the event loop only hands the batch over).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import string
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio

from virtual_mcp.vault.errors import DatabaseError

DB_FILE_NAME = "gateway.db"
T = TypeVar("T")


def _ascii_lower(expression: str) -> str:
    """SQL folding the ASCII letters of `expression` only, as `identity.fold` does. SQLite's lower() does the same
    unless it was built with ICU, where it would fold other scripts too (and KELVIN SIGN to `k`)."""
    for upper in string.ascii_uppercase:
        expression = f"replace({expression}, '{upper}', '{upper.lower()}')"
    return expression


# Built from constant column names and letters only: no value is ever formatted into SQL.
_FOLD_TOKENS = f"UPDATE tokens SET subject_name = {_ascii_lower('subject_name')}"  # noqa: S608
_FOLD_REVOCATIONS = f"UPDATE revocations SET subject = {_ascii_lower('subject')}"  # noqa: S608
_USER, _SUBJECT = _ascii_lower("json_extract(detail, '$.user')"), _ascii_lower("json_extract(detail, '$.subject')")
_REVOCATION_TARGETS = (
    "UPDATE audit SET target = CASE"  # noqa: S608
    f" WHEN json_type(detail, '$.user') = 'text' THEN 'user:' || {_USER}"
    f" WHEN json_type(detail, '$.subject') = 'text' THEN {_SUBJECT} END"
    " WHERE method = 'revoke' AND endpoint = 'cli' AND detail IS NOT NULL AND json_valid(detail)"
)

# Append only: a released migration is never edited. Each entry brings the schema to version index+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY,
            secret_hash BLOB NOT NULL,
            subject_kind TEXT NOT NULL,
            subject_name TEXT NOT NULL,
            description TEXT,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            last_used_at REAL
        )""",
        "CREATE INDEX IF NOT EXISTS tokens_subject ON tokens (subject_kind, subject_name)",
        """CREATE TABLE IF NOT EXISTS secrets (
            tenant TEXT NOT NULL,
            grp TEXT NOT NULL,
            key TEXT NOT NULL,
            envelope BLOB NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, grp, key)
        )""",
    ),
    (
        # Upstream OAuth tokens: access and refresh token sealed together in one envelope, one row per
        # (server, account), so a write can never leave a new access token beside an old refresh token.
        """CREATE TABLE IF NOT EXISTS oauth_tokens (
            server TEXT NOT NULL,
            account TEXT NOT NULL,
            envelope BLOB NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (server, account)
        )""",
    ),
    (
        # The audit trail: one row per event; teams in a table of their own so "everything team X did" is an index
        # range, not a scan. Append only (the gateway never updates or deletes a row).
        """CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            teams TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            server TEXT,
            tool TEXT,
            called TEXT,
            outcome TEXT NOT NULL,
            error TEXT,
            latency_ms REAL NOT NULL,
            auth_mode TEXT,
            forwarded_headers TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)",
        "CREATE INDEX IF NOT EXISTS audit_subject_ts ON audit (subject, ts)",
        "CREATE INDEX IF NOT EXISTS audit_server_ts ON audit (server, ts)",
        "CREATE INDEX IF NOT EXISTS audit_tool_ts ON audit (tool, ts)",
        "CREATE INDEX IF NOT EXISTS audit_outcome_ts ON audit (outcome, ts)",
        "CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id)",
        """CREATE TABLE IF NOT EXISTS audit_teams (
            team TEXT NOT NULL,
            ts REAL NOT NULL,
            audit_id INTEGER NOT NULL REFERENCES audit (id),
            PRIMARY KEY (team, ts, audit_id)
        ) WITHOUT ROWID""",
        # Revocations of whole identities (`virtual-mcp revoke --user`): running gateways poll this table to drop
        # what they hold in memory for the subject and to refuse its IdP JWTs issued before the revocation.
        """CREATE TABLE IF NOT EXISTS revocations (
            id INTEGER PRIMARY KEY,
            subject TEXT NOT NULL,
            revoked_at REAL NOT NULL
        )""",
    ),
    (
        # Identities in canonical form (virtual_mcp/identity.py: ASCII letters folded, nothing else changed). Tokens
        # were stored as typed (`token create --user Dave@X.example`), so `revoke --user dave@x.example` missed them.
        # Neither table has a unique key on the subject, so rows that become equal simply both belong to the one
        # identity (two tokens of one user; two revocations, the later cut-off winning as before).
        _FOLD_TOKENS,
        _FOLD_REVOCATIONS,
        # Not rewritten: `oauth_tokens.account`, always written from an authenticated principal, already folded, and
        # bound into each envelope's encryption context (a rewritten account would no longer decrypt); `audit`, an
        # append-only record of what was seen (its subjects came from authenticated principals too).
        # The identity an event is about when it is not its actor's (a revocation's): `audit --user X` finds both.
        "ALTER TABLE audit ADD COLUMN target TEXT",
        "CREATE INDEX IF NOT EXISTS audit_target_ts ON audit (target, ts)",
        _REVOCATION_TARGETS,
    ),
    (
        # Each OAuth token set's version, raised by every write: a refresh writes its result only if the row is
        # still at the version it read (compare-and-set), so a holder whose lock ran out while it was paused
        # cannot overwrite a newer token set (outbound/token_manager.py). Rows written before start at 1.
        "ALTER TABLE oauth_tokens ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

Params = Sequence[Any]
_CORRUPT = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_PROC_LOCKS = Path("/proc/locks")


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it does not exist yet (SQLite would use the umask's mode; its -wal and -shm
    files copy the main file's).

    Never open and close an existing database file outside SQLite: closing any descriptor of a file drops every
    POSIX lock this process holds on it, including those of its open SQLite connections. Another process would then
    take itself for the file's last user and delete the -wal and -shm files under this one: lost writes, unseen
    revocations, a corrupt database. A file that does not exist yet has no connection in this process.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _identities(path: Path) -> dict[Path, int]:
    """The inodes of the database file and of the -wal and -shm files an open WAL connection keeps."""
    files: dict[Path, int] = {}
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            files[file] = file.stat().st_ino
    return files


def _holds_lock(inode: int) -> bool:
    """Whether this process holds a POSIX lock on the file (an open WAL connection holds a shared one for its whole
    life). Where /proc/locks does not exist (not Linux), assumed so."""
    try:
        text = _PROC_LOCKS.read_text()
    except OSError:
        return True
    pid = str(os.getpid())
    for line in text.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 5354 fe:00:2146349 1073741826 1073742335"
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[4] == pid and fields[5].endswith(f":{inode}"):
            return True
    return False


class Transaction:
    """Statements inside one `BEGIN IMMEDIATE ... COMMIT`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn = db._conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        try:
            cursor = await self._conn.execute(sql, params)
            rowcount = cursor.rowcount
            await cursor.close()
        except sqlite3.Error as e:
            raise self._db.failed(e, "database write failed") from e
        return rowcount

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        try:
            await self._conn.executemany(sql, rows)
        except sqlite3.Error as e:
            raise self._db.failed(e, "database write failed") from e

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._conn.execute_fetchall(sql, params))
        except sqlite3.Error as e:
            raise self._db.failed(e, "database read failed") from e

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database:
    """Use as `async with Database.open(data_dir) as db:`; the only way into the database is through the vault."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, busy_timeout: float = 10.0) -> None:
        self._conn = conn
        self._lock = anyio.Lock()  # one connection: transactions of concurrent tasks must not interleave
        self.path = path
        self._busy_timeout = busy_timeout
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None  # used by one worker thread at a time, under `_lock`
        # The identity (inode) of the database file and its -wal and -shm files while this connection has them
        # open, and the first sign that the file can no longer be trusted (corruption): see `trust_problem`.
        self._files: dict[Path, int] = {}
        self._broken: str | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, data_dir: Path, *, busy_timeout: float = 10.0) -> AsyncIterator[Database]:
        db = await cls.connect(data_dir, busy_timeout=busy_timeout)
        try:
            yield db
        finally:
            await db.close()

    @classmethod
    async def connect(cls, data_dir: Path, *, busy_timeout: float = 10.0) -> Database:
        """Open (creating the directory 0700 and the file 0600 if needed) and migrate. Prefer `open`."""
        data_dir = Path(data_dir)
        path = data_dir / DB_FILE_NAME
        if data_dir.exists() and not data_dir.is_dir():
            raise DatabaseError(f"the data directory {data_dir} is not a directory")
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(path)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise DatabaseError(f"cannot open database {path}: {e}") from e
        conn.row_factory = sqlite3.Row
        db = cls(conn, path, busy_timeout)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await db._migrate()
            db._files = _identities(path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return db

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        async with self._lock:  # a batch still being written finishes first
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        await self._conn.close()

    def read_now(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """One row of a small indexed read, on the calling thread (the event loop): for the per-request lookups
        where handing the query to aiosqlite's thread costs more than the query. Under WAL a reader never waits for
        a writer, and the pages of such a lookup are in memory; it sees everything committed, by any process."""
        if self._reader is None:
            # A short busy wait: the loop must not stall; a busy database is read through aiosqlite instead.
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.05)
            reader.row_factory = sqlite3.Row
            reader.execute("PRAGMA query_only = ON")
            self._reader = reader
        try:
            row: sqlite3.Row | None = self._reader.execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise self.failed(e, f"cannot read {self.path}") from e
        return row

    async def lookup(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """One row of a small indexed read made on every request: on the event loop (`read_now`), or, when the
        database is busy (a checkpoint, a recovery), waited for off the loop."""
        try:
            return self.read_now(sql, params)
        except DatabaseError:
            return await self.fetchone(sql, params)

    async def insert_batch(
        self, first_id_sql: str, statements: Callable[[int], Iterable[tuple[str, Iterable[Params]]]]
    ) -> None:
        """Under the write lock, the first free id (`first_id_sql`), then each (statement, rows) of
        `statements(first)`: all of it, rows made as they are inserted, on a worker thread (`write_batch`)."""

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(first_id_sql).fetchone()
            first = int(row[0]) if row is not None and row[0] is not None else 1
            for sql, rows in statements(first):
                conn.executemany(sql, rows)

        await self.write_batch(work)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction: takes the database write lock up front, so it never fails half way on SQLITE_BUSY."""
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self.failed(e, f"cannot start a transaction on {self.path}") from e
            try:
                yield Transaction(self)
                await self._conn.execute("COMMIT")
            except BaseException as e:
                with anyio.CancelScope(shield=True):
                    if self._conn.in_transaction:
                        await self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self.failed(e, f"cannot commit to {self.path}") from e
                raise

    async def write_batch(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` inside one write transaction (`BEGIN IMMEDIATE ... COMMIT`), run whole on a worker
        thread: building the rows, the statements, the commit and its fsync. For batches (the audit trail): through
        `transaction()`, each statement is a round trip to aiosqlite's thread and the rows are built on the event
        loop, which then stalls every request in flight for as long as a batch takes to prepare."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._write_batch, work)

    def _write_batch(self, work: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        try:
            if writer is None:
                writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                writer.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                writer.execute("PRAGMA synchronous = FULL")
                writer.execute("PRAGMA foreign_keys = ON")
                self._writer = writer
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.failed(e, f"cannot start a transaction on {self.path}") from e
        try:
            result = work(writer)
            writer.execute("COMMIT")
        except BaseException as e:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self.failed(e, f"cannot commit to {self.path}") from e
            raise
        return result

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """A read outside any transaction: sees everything committed, by this process or another."""
        async with self._lock:
            try:
                return list(await self._conn.execute_fetchall(sql, params))
            except sqlite3.Error as e:
                raise self.failed(e, f"cannot read {self.path}") from e

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def failed(self, error: sqlite3.Error, what: str) -> DatabaseError:
        """The gateway's error for a failed statement; corruption is remembered: the store is not trusted again."""
        if getattr(error, "sqlite_errorcode", None) in _CORRUPT and self._broken is None:
            self._broken = f"{what}: {error}"
        return DatabaseError(f"{what}: {error}")

    async def identity(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    def trust_problem(self) -> str | None:
        """Why this process can no longer trust what it reads from and writes to the database, or None.

        The database file, its -wal or its -shm replaced or removed under an open connection (another process
        deleted them: what this one writes from now on is lost to everyone else), this process's lock on the file
        gone (it would let another process do that), or corruption met by a statement.
        """
        if self._broken is not None:
            return f"database {self.path} is corrupt ({self._broken}); restore it or start from a backup"
        for file, inode in self._files.items():
            try:
                now = file.stat().st_ino
            except OSError:
                now = None
            if now != inode:
                return (
                    f"{file} was {'replaced' if now else 'removed'} while this gateway had it open; what it writes "
                    "may be lost: restart the gateway"
                )
        if self._files and not _holds_lock(self._files[self.path]):
            return (
                f"this gateway lost its lock on {self.path} (a descriptor of the file was closed outside SQLite); "
                "another process may delete its -wal under it: restart the gateway"
            )
        return None

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL)")
            row = await tx.fetchone("SELECT MAX(version) FROM schema_version")
            current = int(row[0]) if row is not None and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise DatabaseError(
                    f"database {self.path} has schema version {current}, newer than this gateway's"
                    f" {SCHEMA_VERSION}; upgrade virtual-mcp"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time())
                )

"""`virtual-mcp db copy`: every row of one gateway database into another, empty one, e.g. an embedded install's
SQLite file into the PostgreSQL database its replicas will share.

Rows move as they are: secrets and token sets stay sealed (their envelopes are bound to their records, not to a
database), gateway tokens stay hashed; the master key is not in the database and goes with the data directory (or
`VIRTUAL_MCP_MASTER_KEY`). The source is read inside one write transaction: nothing writes to it meanwhile, so the
copy is one consistent moment of it. The target is written in one transaction: all of it, or nothing.
"""

from __future__ import annotations

from virtual_mcp.errors import BadRequest
from virtual_mcp.vault.audit_store import COLUMNS as AUDIT_COLUMNS
from virtual_mcp.vault.sql import SqlDatabase, SqlTransaction

# Every table of the schema (vault/db.py) but `schema_version`, with its columns and the column it is paged by.
TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "tokens": (
        (
            "id",
            "secret_hash",
            "subject_kind",
            "subject_name",
            "description",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ),
        "id",
    ),
    "secrets": (("tenant", "grp", "key", "envelope", "updated_at"), "tenant, grp, key"),
    "oauth_tokens": (("server", "account", "envelope", "updated_at", "version"), "server, account"),
    "revocations": (("id", "subject", "revoked_at"), "id"),
    "audit": (("id", *AUDIT_COLUMNS), "id"),
    "audit_teams": (("team", "ts", "audit_id"), "audit_id, team"),  # after `audit`: it refers to its rows
}
_PAGE = 2000


async def copy_database(source: SqlDatabase, target: SqlDatabase) -> dict[str, int]:
    """Copy every table of `source` into `target`, which must hold no rows yet; the rows copied, per table."""
    if await source.identity() == await target.identity():
        raise BadRequest(f"--from and --to name the same database ({target.path})")
    copied: dict[str, int] = {}
    async with source.transaction() as read, target.transaction() as write:
        for table in TABLES:
            row = await write.fetchone(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - a fixed table name
            if row is not None and int(row[0]):
                raise BadRequest(
                    f"the target database already holds {int(row[0])} row(s) in {table}: db copy fills a new, empty"
                    " database (nothing is merged or overwritten)"
                )
        for table, (columns, order) in TABLES.items():
            copied[table] = await _copy_table(read, write, table, columns, order)
    return copied


async def _copy_table(
    read: SqlTransaction, write: SqlTransaction, table: str, columns: tuple[str, ...], order: str
) -> int:
    names = ", ".join(columns)
    # Fixed table and column names only; values are always parameters.
    select = f"SELECT {names} FROM {table} ORDER BY {order} LIMIT ? OFFSET ?"  # noqa: S608
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
    count = 0
    while True:
        rows = await read.fetchall(select, (_PAGE, count))
        if not rows:
            return count
        await write.executemany(insert, [tuple(r[i] for i in range(len(columns))) for r in rows])
        count += len(rows)

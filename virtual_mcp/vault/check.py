"""Start-up check of the vault: a wrong or missing master key is a clear error before serving, never mid-request."""

from __future__ import annotations

from pathlib import Path

from virtual_mcp.vault.crypto import Envelope, KeyProvider
from virtual_mcp.vault.errors import MasterKeyError, VaultError
from virtual_mcp.vault.keys import LocalKeyProvider
from virtual_mcp.vault.sql import SqlDatabase

_TABLES = ("secrets", "oauth_tokens")


async def sealed_records(db: SqlDatabase) -> int:
    total = 0
    for table in _TABLES:
        row = await db.fetchone(f"SELECT count(*) AS n FROM {table}")  # noqa: S608 - fixed table names
        total += int(row["n"]) if row is not None else 0
    return total


async def check_master_key(db: SqlDatabase, keys: KeyProvider) -> None:
    """Every master key id the stored records were sealed with must be available."""
    needed: set[str] = set()
    for table in _TABLES:
        for row in await db.fetchall(f"SELECT envelope FROM {table}"):  # noqa: S608 - fixed table names
            needed.add(Envelope.from_bytes(bytes(row["envelope"])).kek_id)
    available = set(getattr(keys, "key_ids", ()))
    missing = sorted(needed - available) if available else []
    if missing:
        raise MasterKeyError(
            f"stored records were sealed with master key(s) {', '.join(missing)}, which the configured master key "
            "does not hold; wrong master key?"
        )


async def health(db: SqlDatabase, data_dir: Path, *others: SqlDatabase) -> dict[str, str | None]:
    """For readiness: the database answers and this process can still trust it (every connection of its own,
    `others` too), and the master key (as it is on disk now) opens what is stored. Each check's problem, or None."""
    problems: dict[str, str | None] = {"database": None, "vault": None}
    try:
        await db.fetchone("SELECT 1")
    except VaultError as exc:
        problems["database"] = exc.message
        return problems
    problems["database"] = next(filter(None, (d.trust_problem() for d in (db, *others))), None)
    if problems["database"] is not None:
        return problems
    try:
        await check_master_key(db, LocalKeyProvider.load(data_dir, create=False))
    except VaultError as exc:
        problems["vault"] = exc.message
    return problems

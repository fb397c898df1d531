"""Revocations of whole identities, in the gateway's database: written by `virtual-mcp revoke`, read by every
running gateway (see `inbound/revocations.py`)."""

from __future__ import annotations

from virtual_mcp.types import Revocation
from virtual_mcp.vault.sql import SqlDatabase


class RevocationStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def add(self, subject: str, revoked_at: float) -> Revocation:
        async with self._db.transaction() as tx:
            # The id is the next after the highest, under the write lock, on either engine (no engine's own
            # sequence, which a copied database would not have advanced).
            await tx.execute(
                "INSERT INTO revocations (id, subject, revoked_at) SELECT COALESCE(MAX(id), 0) + 1, ?, ?"
                " FROM revocations",
                (subject, revoked_at),
            )
            row = await tx.fetchone("SELECT MAX(id) FROM revocations")
        assert row is not None
        return Revocation(int(row[0]), subject, revoked_at)

    async def since(self, after_id: int) -> list[Revocation]:
        """Revocations recorded after the one with id `after_id`, oldest first."""
        rows = await self._db.fetchall(
            "SELECT id, subject, revoked_at FROM revocations WHERE id > ? ORDER BY id", (after_id,)
        )
        return [Revocation(int(r["id"]), str(r["subject"]), float(r["revoked_at"])) for r in rows]

"""Secret values behind `tfy-secret://tenant:group:key` references, each sealed in its own envelope."""

from __future__ import annotations

import time
from collections.abc import Callable

from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.vault.crypto import Envelope, KeyProvider, RecordContext, open_envelope, rewrap, seal
from virtual_mcp.vault.errors import DecryptError, SecretNotFound
from virtual_mcp.vault.sql import SqlDatabase


def secret_context(ref: SecretRef) -> RecordContext:
    """The identity a secret's envelope is bound to: moved to another (tenant, group, key) it no longer opens."""
    return RecordContext(tenant=ref.tenant, user="", server=ref.group, kind=f"secret:{ref.key}")


def _key(ref: SecretRef) -> tuple[str, str, str]:
    return (ref.tenant, ref.group, ref.key)


class SecretStore:
    def __init__(self, db: SqlDatabase, keys: KeyProvider, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock

    async def set(self, ref: SecretRef, value: str) -> None:
        blob = seal(value.encode("utf-8"), secret_context(ref), self._keys).to_bytes()
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO secrets (tenant, grp, key, envelope, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, grp, key) DO UPDATE SET envelope = excluded.envelope,"
                " updated_at = excluded.updated_at",
                (*_key(ref), blob, self._clock()),
            )

    async def get(self, ref: SecretRef) -> str:
        row = await self._db.fetchone(
            "SELECT envelope FROM secrets WHERE tenant = ? AND grp = ? AND key = ?", _key(ref)
        )
        if row is None:
            raise SecretNotFound(ref)
        try:
            plaintext = open_envelope(Envelope.from_bytes(bytes(row["envelope"])), secret_context(ref), self._keys)
            return plaintext.decode("utf-8")
        except DecryptError as e:
            raise DecryptError(f"{ref.uri}: {e.message}") from None
        except UnicodeDecodeError:
            raise DecryptError(f"{ref.uri}: decrypted value is not UTF-8") from None

    async def exists(self, ref: SecretRef) -> bool:
        return (
            await self._db.fetchone("SELECT 1 FROM secrets WHERE tenant = ? AND grp = ? AND key = ?", _key(ref))
            is not None
        )

    async def list_refs(self) -> list[SecretRef]:
        rows = await self._db.fetchall("SELECT tenant, grp, key FROM secrets ORDER BY tenant, grp, key")
        return [SecretRef(r["tenant"], r["grp"], r["key"]) for r in rows]

    async def delete(self, ref: SecretRef) -> bool:
        async with self._db.transaction() as tx:
            return await tx.execute("DELETE FROM secrets WHERE tenant = ? AND grp = ? AND key = ?", _key(ref)) > 0

    async def rewrap_all(self) -> int:
        """Re-wrap every data key not yet under the current master key; returns how many were re-wrapped.

        One transaction: either every secret moves to the current key or (on any DecryptError) none does.
        """
        current = self._keys.current_key_id()
        async with self._db.transaction() as tx:
            rows = await tx.fetchall("SELECT tenant, grp, key, envelope FROM secrets")
            count = 0
            for row in rows:
                ref = SecretRef(row["tenant"], row["grp"], row["key"])
                env = Envelope.from_bytes(bytes(row["envelope"]))
                if env.kek_id == current:
                    continue
                try:
                    new = rewrap(env, secret_context(ref), self._keys)
                except DecryptError as e:
                    raise DecryptError(f"{ref.uri}: {e.message}") from None
                await tx.execute(
                    "UPDATE secrets SET envelope = ? WHERE tenant = ? AND grp = ? AND key = ?",
                    (new.to_bytes(), *_key(ref)),
                )
                count += 1
        return count

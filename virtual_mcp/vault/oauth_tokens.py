"""Upstream OAuth token sets at rest: one sealed envelope per (server, account), written in one transaction.

The record context binds each envelope to its (server, account), so a row copied elsewhere does not decrypt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from virtual_mcp.vault.crypto import Envelope, KeyProvider, RecordContext, open_envelope, rewrap, seal
from virtual_mcp.vault.errors import DecryptError
from virtual_mcp.vault.sql import SqlDatabase

TokenRecord = dict[str, Any]  # access_token, refresh_token, obtained_at, expires_in, scope, token_type


def token_context(server: str, account: str) -> RecordContext:
    return RecordContext(tenant="", user=account, server=server, kind="oauth-token")


class OAuthTokenStore:
    def __init__(self, db: SqlDatabase, keys: KeyProvider, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock

    async def put(self, server: str, account: str, record: TokenRecord, *, expect: int | None = None) -> int | None:
        """Store the whole token set atomically (one row, one transaction); its new version.

        `expect`: the version the writer read (0: there was no row). The row is written only if it is still at that
        version, so a writer that fell behind (its refresh lock ran out while it was paused) never overwrites a
        newer token set: None is returned instead, nothing written. Without `expect` the write is unconditional.
        """
        blob = seal(json.dumps(record).encode(), token_context(server, account), self._keys).to_bytes()
        now = self._clock()
        async with self._db.transaction() as tx:
            if expect is None:
                await tx.execute(
                    "INSERT INTO oauth_tokens (server, account, envelope, updated_at, version) VALUES (?, ?, ?, ?, 1)"
                    " ON CONFLICT (server, account) DO UPDATE SET envelope = excluded.envelope,"
                    " updated_at = excluded.updated_at, version = oauth_tokens.version + 1",
                    (server, account, blob, now),
                )
            elif expect == 0:
                if not await tx.execute(
                    "INSERT INTO oauth_tokens (server, account, envelope, updated_at, version) VALUES (?, ?, ?, ?, 1)"
                    " ON CONFLICT (server, account) DO NOTHING",
                    (server, account, blob, now),
                ):
                    return None
            elif not await tx.execute(
                "UPDATE oauth_tokens SET envelope = ?, updated_at = ?, version = version + 1"
                " WHERE server = ? AND account = ? AND version = ?",
                (blob, now, server, account, expect),
            ):
                return None
            row = await tx.fetchone(
                "SELECT version FROM oauth_tokens WHERE server = ? AND account = ?", (server, account)
            )
            assert row is not None
            return int(row["version"])

    async def get(self, server: str, account: str) -> TokenRecord | None:
        found = await self.get_versioned(server, account)
        return None if found is None else found[0]

    async def get_versioned(self, server: str, account: str) -> tuple[TokenRecord, int] | None:
        """The token set and its version (what `put(expect=...)` compares)."""
        row = await self._db.fetchone(
            "SELECT envelope, version FROM oauth_tokens WHERE server = ? AND account = ?", (server, account)
        )
        if row is None:
            return None
        try:
            plaintext = open_envelope(
                Envelope.from_bytes(bytes(row["envelope"])), token_context(server, account), self._keys
            )
        except DecryptError as e:
            raise DecryptError(f"stored token for {server} / {account}: {e.message}") from None
        record = json.loads(plaintext)
        if not isinstance(record, dict):
            raise DecryptError(f"stored token for {server} / {account}: not a token record")
        return record, int(row["version"])

    async def delete(self, server: str, account: str) -> bool:
        async with self._db.transaction() as tx:
            return await tx.execute("DELETE FROM oauth_tokens WHERE server = ? AND account = ?", (server, account)) > 0

    async def accounts(self, account: str) -> list[str]:
        """The servers `account` holds tokens for (to show and disconnect connected accounts)."""
        rows = await self._db.fetchall("SELECT server FROM oauth_tokens WHERE account = ? ORDER BY server", (account,))
        return [str(r["server"]) for r in rows]

    async def rewrap_all(self) -> int:
        """Re-wrap every record's data key under the current master key (payloads untouched); one transaction."""
        current = self._keys.current_key_id()
        count = 0
        async with self._db.transaction() as tx:
            for row in await tx.fetchall("SELECT server, account, envelope FROM oauth_tokens"):
                env = Envelope.from_bytes(bytes(row["envelope"]))
                if env.kek_id == current:
                    continue
                new = rewrap(env, token_context(row["server"], row["account"]), self._keys)
                await tx.execute(
                    "UPDATE oauth_tokens SET envelope = ? WHERE server = ? AND account = ?",
                    (new.to_bytes(), row["server"], row["account"]),
                )
                count += 1
        return count

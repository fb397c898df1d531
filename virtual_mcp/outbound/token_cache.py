"""A token cache that survives restarts: memory in front, the vault (envelope-encrypted) behind.

Keys are `kind|server|account` (e.g. `2lo|backend-group/internal-analytics|client:abc`). A hit in memory costs a
dict lookup; a miss decrypts the stored record once. A write goes to the vault first, atomically, then to memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from virtual_mcp.outbound.oauth_client import TokenSet
from virtual_mcp.timing import phase
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore


def token_key(kind: str, server: str, account: str) -> str:
    return f"{kind}|{server}|{account}"


def _split(key: str) -> tuple[str, str]:
    _, server, account = key.split("|", 2)
    return server, account


def _to_record(token: TokenSet) -> dict[str, Any]:
    return {
        "access_token": token.access_token,
        "refresh_token": token.refresh_token,
        "obtained_at": token.obtained_at,
        "expires_in": token.expires_in,
        "scope": token.scope,
        "token_type": token.token_type,
        "refreshing_by": token.refreshing_by,
        "refresh_lost": token.refresh_lost,
    }


def _from_record(record: dict[str, Any]) -> TokenSet:
    return TokenSet(
        access_token=str(record["access_token"]),
        obtained_at=float(record["obtained_at"]),
        expires_in=float(record["expires_in"]) if record.get("expires_in") is not None else None,
        refresh_token=record.get("refresh_token"),
        scope=record.get("scope"),
        token_type=str(record.get("token_type") or "Bearer"),
        refreshing_by=record.get("refreshing_by"),
        refresh_lost=bool(record.get("refresh_lost", False)),
    )


class VaultTokenCache:
    def __init__(self, store: OAuthTokenStore) -> None:
        self._store = store
        self._memory: dict[str, TokenSet] = {}

    async def get(self, key: str, fresh: bool = False) -> TokenSet | None:
        token = None if fresh else self._memory.get(key)
        if token is not None:
            return token
        with phase("vault"):
            found = await self._store.get_versioned(*_split(key))
        if found is None:
            self._memory.pop(key, None)  # gone from the store (disconnected, revoked): gone here too
            return None
        token = self._memory[key] = replace(_from_record(found[0]), version=found[1])
        return token

    async def set(self, key: str, token: TokenSet) -> TokenSet | None:
        with phase("vault"):
            version = await self._store.put(*_split(key), _to_record(token), expect=token.version)
        if version is None:
            self._memory.pop(key, None)  # the store has moved on: read it again when next asked
            return None
        stored = self._memory[key] = replace(token, version=version)
        return stored

    async def delete(self, key: str) -> None:
        self._memory.pop(key, None)
        await self._store.delete(*_split(key))

    def evict(self, key: str) -> None:
        self._memory.pop(key, None)

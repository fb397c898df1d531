"""Upstream tokens at rest: sealed together, readable after a restart, unreadable when moved, never in plain text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.sensitive import mark
from virtual_mcp.outbound.oauth_client import TokenSet
from virtual_mcp.outbound.token_cache import VaultTokenCache, token_key
from virtual_mcp.vault import Database, DecryptError, LocalKeyProvider
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

ACCESS = "access-token-value-0123456789abcdef"
REFRESH = "refresh-token-value-fedcba9876543210"
mark(ACCESS, REFRESH)


def plain_text_in(directory: Path, *values: str) -> list[str]:
    return [p.name for p in directory.iterdir() for v in values if v.encode() in p.read_bytes()]


async def test_token_sets_survive_a_restart_and_stay_encrypted(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path)
    key = token_key("3lo", "backend-group/github", "user:alice@northwind.example")
    token = TokenSet(ACCESS, 1_800_000_000.0, 3600.0, REFRESH, "repo")
    async with Database.open(tmp_path) as db:
        await VaultTokenCache(OAuthTokenStore(db, keys)).set(key, token)
    async with Database.open(tmp_path) as db:
        # A new process: nothing in memory, the vault answers.
        assert await VaultTokenCache(OAuthTokenStore(db, keys)).get(key) == token
    assert not plain_text_in(tmp_path, ACCESS, REFRESH)


async def test_a_record_moved_to_another_row_does_not_decrypt(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path)
    async with Database.open(tmp_path) as db:
        store = OAuthTokenStore(db, keys)
        await store.put("g/s", "user:alice@x", {"access_token": ACCESS, "obtained_at": 1.0})
        await store.put("g/s", "user:mallory@x", {"access_token": "mallory-token-000000", "obtained_at": 1.0})
    with sqlite3.connect(tmp_path / "gateway.db") as raw:
        alice = raw.execute("SELECT envelope FROM oauth_tokens WHERE account = 'user:alice@x'").fetchone()[0]
        raw.execute("UPDATE oauth_tokens SET envelope = ? WHERE account = 'user:mallory@x'", (alice,))
    async with Database.open(tmp_path) as db:
        store = OAuthTokenStore(db, keys)
        with pytest.raises(DecryptError):
            await store.get("g/s", "user:mallory@x")
        assert (await store.get("g/s", "user:alice@x") or {})["access_token"] == ACCESS
        assert await store.accounts("user:alice@x") == ["g/s"]
        assert await store.delete("g/s", "user:alice@x") and await store.get("g/s", "user:alice@x") is None

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.processes import read_elsewhere
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import (
    Database,
    DecryptError,
    Envelope,
    LocalKeyProvider,
    SecretNotFound,
    SecretStore,
    TokenStore,
)
from virtual_mcp.vault.keys import ENV_VAR, generate_master_key_b64

A = SecretRef("acme", "github", "pat")
B = SecretRef("acme", "gitlab", "pat")
VALUE_A = "ghp_plaintext-value-that-must-not-be-on-disk"
VALUE_B = "glpat-another-plaintext-value"


async def test_set_get_exists_list_delete(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path, env={})
    async with Database.open(tmp_path) as db:
        store = SecretStore(db, keys)
        assert not await store.exists(A)
        with pytest.raises(SecretNotFound) as info:
            await store.get(A)
        assert str(info.value) == f"secret not found: {A.uri}"
        await store.set(A, VALUE_A)
        await store.set(B, VALUE_B)
        await store.set(A, VALUE_A + "-v2")  # overwrite
        assert await store.get(A) == VALUE_A + "-v2"
        assert await store.exists(A)
        assert await store.list_refs() == [A, B]
        assert await store.delete(A) is True
        assert await store.delete(A) is False
        assert await store.list_refs() == [B]
        await store.set(A, "ünïcødé ✓")
        assert await store.get(A) == "ünïcødé ✓"


async def test_envelope_swapped_between_rows_fails_its_aad_check(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path, env={})
    async with Database.open(tmp_path) as db:
        store = SecretStore(db, keys)
        await store.set(A, VALUE_A)
        await store.set(B, VALUE_B)
        raw = sqlite3.connect(tmp_path / "gateway.db")
        with raw:
            blobs = dict(raw.execute("SELECT grp, envelope FROM secrets").fetchall())
            raw.execute("UPDATE secrets SET envelope = ? WHERE grp = 'github'", (blobs["gitlab"],))
            raw.execute("UPDATE secrets SET envelope = ? WHERE grp = 'gitlab'", (blobs["github"],))
        raw.close()
        for ref in (A, B):
            with pytest.raises(DecryptError) as info:
                await store.get(ref)
            message = str(info.value)
            assert ref.uri in message and VALUE_A not in message and VALUE_B not in message


async def test_wrong_master_key(tmp_path: Path) -> None:
    right = LocalKeyProvider.load(tmp_path, env={ENV_VAR: generate_master_key_b64()})
    wrong = LocalKeyProvider.load(tmp_path, env={ENV_VAR: generate_master_key_b64()})
    async with Database.open(tmp_path) as db:
        await SecretStore(db, right).set(A, VALUE_A)
        with pytest.raises(DecryptError) as info:
            await SecretStore(db, wrong).get(A)
        assert A.uri in str(info.value) and VALUE_A not in str(info.value)


async def test_add_key_and_rewrap_all(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path, env={})
    old_id = keys.current_key_id()
    refs = [SecretRef("acme", "g", f"k{i}") for i in range(5)]
    async with Database.open(tmp_path) as db:
        store = SecretStore(db, keys)
        for i, ref in enumerate(refs):
            await store.set(ref, f"value-{i}")
        before = {r[0]: bytes(r[1]) for r in await db.fetchall("SELECT key, envelope FROM secrets")}
        new_id = keys.add_key()
        assert await store.rewrap_all() == len(refs)
        assert await store.rewrap_all() == 0  # already under the current key
        after = {r[0]: Envelope.from_bytes(bytes(r[1])) for r in await db.fetchall("SELECT key, envelope FROM secrets")}
        assert {e.kek_id for e in after.values()} == {new_id} and old_id != new_id
        for key, env in after.items():
            assert env.ciphertext == Envelope.from_bytes(before[key]).ciphertext  # payload untouched
        # A process holding only the new key reads every secret.
        only_new = LocalKeyProvider({new_id: keys._keys[new_id]}, new_id)
        assert [await SecretStore(db, only_new).get(r) for r in refs] == [f"value-{i}" for i in range(5)]


async def test_database_files_hold_no_plaintext_secret_or_token(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path, env={})
    async with Database.open(tmp_path) as db:
        await SecretStore(db, keys).set(A, VALUE_A)
        await SecretStore(db, keys).set(B, VALUE_B)
        _, token = await TokenStore(db).create(PrincipalKind.USER, "alice@x")
        secret_part = token.split("_")[2]
        files = [tmp_path / "gateway.db", tmp_path / "gateway.db-wal"]
        assert (tmp_path / "gateway.db-wal").stat().st_size > 0
        data = b"".join(read_elsewhere(p) for p in files if p.exists())
        assert b"alice@x" in data  # the scan does see what is stored in the clear
        for needle in (VALUE_A, VALUE_B, token, secret_part):
            assert needle.encode() not in data
            assert needle.encode("utf-16-le") not in data

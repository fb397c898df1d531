from __future__ import annotations

import base64
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from virtual_mcp.vault import DecryptError, LocalKeyProvider, MasterKeyError, RecordContext, open_envelope, seal
from virtual_mcp.vault.keys import ENV_VAR, generate_master_key_b64, key_id_for

CTX = RecordContext("t", "", "g", "secret:k")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = LocalKeyProvider.load(data_dir, env={})
    path = data_dir / "master.key"
    assert mode(path) == 0o600
    assert mode(data_dir) & 0o077 == 0
    again = LocalKeyProvider.load(data_dir, env={}, create=False)
    assert again.current_key_id() == first.current_key_id()
    assert open_envelope(seal(b"v", CTX, first), CTX, again) == b"v"
    assert all(base64.b64encode(k).decode() not in repr(first) for k in first._keys.values())


def test_group_or_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    LocalKeyProvider.load(tmp_path, env={})
    path = tmp_path / "master.key"
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        LocalKeyProvider.load(tmp_path, env={})


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="no master key file"):
        LocalKeyProvider.load(tmp_path, env={}, create=False)
    assert not (tmp_path / "master.key").exists()


def write_key_file(path: Path, doc: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))


def b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


@pytest.mark.parametrize(
    "doc",
    [
        "{not json",
        [],
        {"version": 1, "current": "x", "keys": {}},
        {"version": 1, "current": "x", "keys": {"x": {"key": b64(16)}}},  # wrong length
        {"version": 1, "current": "x", "keys": {"x": {"key": "***"}}},  # not base64
        {"version": 1, "current": "x", "keys": {"x": {"key": b64(32)}}},  # id does not match key
        {"version": 1, "current": "nope", "keys": {}},
    ],
)
def test_malformed_key_file(tmp_path: Path, doc: object) -> None:
    write_key_file(tmp_path / "master.key", doc)
    with pytest.raises(MasterKeyError) as info:
        LocalKeyProvider.load(tmp_path, env={})
    assert "master key file" in str(info.value)


def test_env_key(tmp_path: Path) -> None:
    text = generate_master_key_b64()
    keys = LocalKeyProvider.load(tmp_path, env={ENV_VAR: text})
    assert keys.current_key_id() == key_id_for(base64.b64decode(text))
    assert not (tmp_path / "master.key").exists()
    env = seal(b"v", CTX, keys)
    assert open_envelope(env, CTX, LocalKeyProvider.load(tmp_path, env={ENV_VAR: text + "\n"})) == b"v"
    with pytest.raises(MasterKeyError, match=ENV_VAR):
        keys.add_key()


@pytest.mark.parametrize("value", ["", "not base64!", base64.b64encode(b"x" * 31).decode()])
def test_bad_env_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(MasterKeyError) as info:
        LocalKeyProvider.load(tmp_path, env={ENV_VAR: value})
    assert ENV_VAR in str(info.value)
    if value:
        assert value not in str(info.value)


def test_wrong_master_key_is_a_clean_error(tmp_path: Path) -> None:
    right = LocalKeyProvider.load(tmp_path, env={ENV_VAR: generate_master_key_b64()})
    wrong = LocalKeyProvider.load(tmp_path, env={ENV_VAR: generate_master_key_b64()})
    with pytest.raises(DecryptError, match=ENV_VAR):
        open_envelope(seal(b"v", CTX, right), CTX, wrong)


def test_add_key_persists_atomically_and_keeps_old_keys(tmp_path: Path) -> None:
    keys = LocalKeyProvider.load(tmp_path, env={})
    old_id = keys.current_key_id()
    env = seal(b"v", CTX, keys)
    new_id = keys.add_key()
    assert new_id != old_id and keys.current_key_id() == new_id
    path = tmp_path / "master.key"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["master.key"]
    reloaded = LocalKeyProvider.load(tmp_path, env={}, create=False)
    assert reloaded.current_key_id() == new_id and set(reloaded.key_ids) == {old_id, new_id}
    assert open_envelope(env, CTX, reloaded) == b"v"


def test_a_running_process_picks_up_a_key_added_by_another(tmp_path: Path) -> None:
    server = LocalKeyProvider.load(tmp_path, env={})
    cli = LocalKeyProvider.load(tmp_path, env={})
    cli.add_key()
    assert open_envelope(seal(b"v", CTX, cli), CTX, server) == b"v"


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: LocalKeyProvider.load(tmp_path, env={}), range(16)))
    assert len({k.current_key_id() for k in loaded}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]

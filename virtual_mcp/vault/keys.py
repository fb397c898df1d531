"""Local master keys (KEKs): a 0600 JSON key file under the data dir, or one key in `VIRTUAL_MCP_MASTER_KEY`.

Key ids are derived from a hash of the key, so the same key has the same id whether it comes from the file or
from the environment, and a key file whose key does not match its id is detected as damaged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from virtual_mcp.vault.crypto import KEY_BYTES, aes_gcm_unwrap, aes_gcm_wrap
from virtual_mcp.vault.errors import DecryptError, MasterKeyError

ENV_VAR = "VIRTUAL_MCP_MASTER_KEY"
KEY_FILE_NAME = "master.key"
_FILE_VERSION = 1


def key_id_for(key: bytes) -> str:
    return hashlib.sha256(b"virtual-mcp/kek-id\0" + key).hexdigest()[:16]


def generate_master_key_b64() -> str:
    """A fresh key in the form `VIRTUAL_MCP_MASTER_KEY` expects."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode_key(text: str, where: str) -> bytes:
    t = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(t + "=" * (-len(t) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{where}: the master key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{where}: the master key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


class LocalKeyProvider:
    """A KeyProvider over keys held in this process; wraps data keys with AES-256-GCM."""

    def __init__(self, keys: Mapping[str, bytes], current: str, path: Path | None = None) -> None:
        if current not in keys:
            raise MasterKeyError("the current master key id is not among the keys")
        self._keys = dict(keys)
        self._current = current
        self.path = path

    def __repr__(self) -> str:
        return f"LocalKeyProvider(source={self.source!r}, current={self._current!r}, ids={self.key_ids})"

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else ENV_VAR

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @classmethod
    def load(cls, data_dir: Path, env: Mapping[str, str] = os.environ, create: bool = True) -> LocalKeyProvider:
        if ENV_VAR in env:
            key = _decode_key(env[ENV_VAR], ENV_VAR)
            return cls({key_id_for(key): key}, key_id_for(key))
        path = Path(data_dir) / KEY_FILE_NAME
        if not path.exists():
            if not create:
                raise MasterKeyError(f"no master key file at {path} (and {ENV_VAR} is not set)")
            key = os.urandom(KEY_BYTES)
            doc = _document({key_id_for(key): key}, key_id_for(key), {})
            Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            _publish_first(path, doc)
        keys, current, _ = _read(path)
        return cls(keys, current, path=path)

    def current_key_id(self) -> str:
        return self._current

    def derived(self, purpose: str) -> tuple[bytes, ...]:
        """Keys for `purpose` derived from the master keys (HKDF-SHA256), the current key's first: what replicas
        sharing the master key seal for each other (a derived key never opens a vault record, nor the reverse)."""
        order = [self._current, *sorted(k for k in self._keys if k != self._current)]
        info = b"virtual-mcp/derived/" + purpose.encode()
        return tuple(
            HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(self._keys[kid])
            for kid in order
        )

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        return self._current, aes_gcm_wrap(self._keys[self._current], data_key, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        if kek_id not in self._keys and self.path is not None:
            # Another process (the CLI rotating keys) may have added it since we loaded.
            self._keys, self._current, _ = _read(self.path)
        kek = self._keys.get(kek_id)
        if kek is None:
            raise DecryptError(f"cannot decrypt record: it was sealed with master key {kek_id!r}, not in {self.source}")
        return aes_gcm_unwrap(kek, wrapped, aad)

    def add_key(self) -> str:
        """Add a new key and make it current; older keys stay so existing records can still be unwrapped."""
        if self.path is None:
            raise MasterKeyError(f"the master key comes from {ENV_VAR}; rotate it there, not with add_key")
        with _locked(self.path):
            keys, _, created = _read(self.path)  # merge with what is on disk now, not what we loaded
            key = os.urandom(KEY_BYTES)
            kid = key_id_for(key)
            keys[kid] = key
            tmp = _temp_name(self.path)
            try:
                _write_new(tmp, _document(keys, kid, created))
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        self._keys, self._current = keys, kid
        return kid


def _document(keys: Mapping[str, bytes], current: str, created: Mapping[str, float]) -> bytes:
    now = time.time()
    entries = {
        kid: {"key": base64.b64encode(k).decode("ascii"), "created_at": created.get(kid, now)}
        for kid, k in keys.items()
    }
    return json.dumps({"version": _FILE_VERSION, "current": current, "keys": entries}, indent=2).encode() + b"\n"


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _publish_first(path: Path, data: bytes) -> None:
    """Create `path` complete or not at all: a concurrent reader never sees a half-written key file."""
    tmp = _temp_name(path)
    try:
        _write_new(tmp, data)
        with contextlib.suppress(FileExistsError):  # another process won the race: its file is the one to use
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_json(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise MasterKeyError(f"no master key file at {path}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if os.name == "posix" and mode & 0o077:
            raise MasterKeyError(
                f"master key file {path} is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
            )
        raw = f.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MasterKeyError(f"master key file {path} is not valid JSON") from None


def _read(path: Path) -> tuple[dict[str, bytes], str, dict[str, float]]:
    doc = _load_json(path)
    if not isinstance(doc, dict) or doc.get("version") != _FILE_VERSION:
        raise MasterKeyError(f"master key file {path}: unsupported or missing version")
    entries, current = doc.get("keys"), doc.get("current")
    if not isinstance(entries, dict) or not entries:
        raise MasterKeyError(f"master key file {path}: no keys")
    keys: dict[str, bytes] = {}
    created: dict[str, float] = {}
    for kid, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise MasterKeyError(f"master key file {path}: key {kid!r} is malformed")
        key = _decode_key(entry["key"], f"master key file {path}: key {kid!r}")
        if key_id_for(key) != kid:
            raise MasterKeyError(f"master key file {path}: key {kid!r} does not match its id (file damaged?)")
        keys[kid] = key
        if isinstance(entry.get("created_at"), int | float):
            created[kid] = float(entry["created_at"])
    if not isinstance(current, str) or current not in keys:
        raise MasterKeyError(f"master key file {path}: 'current' does not name one of its keys")
    return keys, current, created


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of the key file across processes, so two rotations cannot drop each other's key."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Envelope encryption: one random data key per record, wrapped by a master key (KEK). No storage here.

The record's identity (`RecordContext`) is the additional authenticated data of both the payload and the wrapped
data key, so an envelope copied into another row, or re-labelled, fails to decrypt instead of yielding a value
that belongs to someone else.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from virtual_mcp.vault.errors import DecryptError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit GCM nonce
_AAD_DOMAIN = b"virtual-mcp/record/v1"
_MAGIC = b"VMCE"
_VERSION = 1
_LEN = struct.Struct(">I")
_FAILED = "authentication failed (wrong master key, tampered data, or a record moved to another row)"


def _lp(*parts: bytes) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


@dataclass(frozen=True, slots=True)
class RecordContext:
    """Who a record belongs to; its canonical bytes are the AAD of the payload and of the wrapped key."""

    tenant: str
    user: str
    server: str
    kind: str

    def canonical_bytes(self) -> bytes:
        # Length-prefixed, so ("a:b", "c") and ("a", "b:c") can never collide.
        fields = (self.tenant, self.user, self.server, self.kind)
        return _AAD_DOMAIN + _lp(*(f.encode("utf-8") for f in fields))


@dataclass(frozen=True, slots=True)
class Envelope:
    kek_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        body = _lp(self.kek_id.encode("utf-8"), self.wrapped_key, self.nonce, self.ciphertext)
        return _MAGIC + bytes([_VERSION]) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        if data[:4] != _MAGIC or len(data) < 5:
            raise DecryptError("cannot decrypt record: not an envelope")
        if data[4] != _VERSION:
            raise DecryptError(f"cannot decrypt record: unsupported envelope version {data[4]}")
        parts: list[bytes] = []
        pos = 5
        for _ in range(4):
            if pos + _LEN.size > len(data):
                raise DecryptError("cannot decrypt record: truncated envelope")
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + n > len(data):
                raise DecryptError("cannot decrypt record: truncated envelope")
            parts.append(bytes(data[pos : pos + n]))
            pos += n
        if pos != len(data):
            raise DecryptError("cannot decrypt record: trailing bytes after envelope")
        try:
            kek_id = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptError("cannot decrypt record: malformed key id") from None
        return cls(kek_id, parts[1], parts[2], parts[3])


class KeyProvider(Protocol):
    """Holds the master keys (KEKs) and wraps/unwraps data keys; the keys never leave it."""

    def current_key_id(self) -> str: ...

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap with the current KEK; returns (kek_id, wrapped)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Raises DecryptError when the KEK is unknown or the wrapped key does not authenticate."""
        ...


def aes_gcm_wrap(kek: bytes, data_key: bytes, aad: bytes) -> bytes:
    """Wrap a data key under a KEK: nonce || AES-256-GCM(data_key). For KeyProvider implementations."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, aad)


def aes_gcm_unwrap(kek: bytes, wrapped: bytes, aad: bytes) -> bytes:
    if len(wrapped) != NONCE_BYTES + KEY_BYTES + 16:
        raise DecryptError("cannot decrypt record: malformed wrapped key")
    try:
        data_key = AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptError(f"cannot unwrap data key: {_FAILED}") from None
    return data_key


def seal(plaintext: bytes, ctx: RecordContext, keys: KeyProvider) -> Envelope:
    aad = ctx.canonical_bytes()
    data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    kek_id, wrapped = keys.wrap(data_key, aad)
    return Envelope(kek_id, wrapped, nonce, ciphertext)


def _data_key(env: Envelope, aad: bytes, keys: KeyProvider) -> bytes:
    data_key = keys.unwrap(env.kek_id, env.wrapped_key, aad)
    if len(data_key) != KEY_BYTES:
        raise DecryptError("cannot decrypt record: unwrapped data key has the wrong length")
    return data_key


def open_envelope(env: Envelope, ctx: RecordContext, keys: KeyProvider) -> bytes:
    aad = ctx.canonical_bytes()
    data_key = _data_key(env, aad, keys)
    if len(env.nonce) != NONCE_BYTES:
        raise DecryptError("cannot decrypt record: malformed nonce")
    try:
        return AESGCM(data_key).decrypt(env.nonce, env.ciphertext, aad)
    except InvalidTag:
        raise DecryptError(f"cannot decrypt record: {_FAILED}") from None


def rewrap(env: Envelope, ctx: RecordContext, keys: KeyProvider) -> Envelope:
    """Re-wrap the data key with the current KEK; the payload ciphertext and nonce are kept as they are."""
    aad = ctx.canonical_bytes()
    data_key = _data_key(env, aad, keys)
    kek_id, wrapped = keys.wrap(data_key, aad)
    return Envelope(kek_id, wrapped, env.nonce, env.ciphertext)

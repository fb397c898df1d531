"""What one replica hands another through Redis that a caller sent or will read (a message for a session's stream, a
caller's answer) is sealed: AES-256-GCM under a key derived from the master key the replicas share
(`LocalKeyProvider.derived`), so Redis, and whoever reads its traffic, never holds it readable.

A sealed text is sealed with the current master key's derivation and opened with any known key's, so replicas keep
understanding each other while a new master key is rolled out.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


def digest(text: str) -> str:
    """What Redis names a secret or an identity by (a session id, a ticket, a one-time id, a subject), never the
    thing itself: its SHA-256, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


class Sealer:
    def __init__(self, keys: Sequence[bytes], purpose: str) -> None:
        if not keys:
            raise ValueError("a sealer needs at least one key")
        self._aeads = [AESGCM(key) for key in keys]
        self._aad = b"virtual-mcp fleet " + purpose.encode()

    def seal(self, data: bytes) -> str:
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + self._aeads[0].encrypt(nonce, data, self._aad)).decode("ascii")

    def open(self, sealed: str) -> bytes | None:
        """The data, or None for anything not sealed by a replica of this fleet (or altered)."""
        try:
            raw = base64.b64decode(sealed, validate=True)
        except ValueError:
            return None
        for aead in self._aeads:
            try:
                return aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad)
            except (InvalidTag, ValueError):
                continue
        return None

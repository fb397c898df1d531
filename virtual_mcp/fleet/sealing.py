"""What one replica hands another through Redis that a caller sent or will read (a message for a session's stream, a
caller's answer) is sealed: AES-256-GCM under a key derived from the master key the replicas share
(`LocalKeyProvider.derived`), so Redis, and whoever reads its traffic, never holds it readable.

A sealed text is sealed with the current master key's derivation and opened with any known key's, so replicas keep
understanding each other while a new master key is rolled out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger(__name__)

_NONCE = 12
FRESH = 60.0  # seconds a notice is good for: an older one, replayed, is ignored


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


class Notices:
    """What one replica tells the others on a channel, sealed whole with its send time: Redis never holds it
    readable, and none can be forged without the fleet's key, altered, or replayed more than `FRESH` seconds later.
    A replica does not hear its own (`origin`)."""

    def __init__(self, sealer: Sealer, origin: str, what: str, max_bytes: int = 1024 * 1024) -> None:
        self._sealer = sealer
        self.origin = origin
        self._what = what
        self._max = max_bytes

    def seal(self, notice: Mapping[str, Any]) -> str | None:
        """The text to publish; None if it is larger than the channel takes."""
        inner = json.dumps({**notice, "at": time.time()}).encode()
        text = json.dumps({"v": "1", "from": self.origin, "x": self._sealer.seal(inner)})
        return text if len(text) <= self._max else None

    def open(self, raw: bytes | str) -> dict[str, Any] | None:
        """Another replica's fresh notice (without its time); None for this replica's own and anything else."""
        if len(raw) > self._max + 1024:
            return None
        try:
            outer = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(outer, dict) or outer.get("v") != "1" or outer.get("from") == self.origin:
            return None
        sealed = outer.get("x")
        opened = self._sealer.open(sealed) if isinstance(sealed, str) else None
        if opened is None:
            logger.info("a %s this replica cannot open; dropped (another master key?)", self._what)
            return None
        try:
            inner = json.loads(opened)
        except ValueError:
            return None
        if not isinstance(inner, dict):
            return None
        at = inner.pop("at", None)
        if not isinstance(at, int | float) or abs(time.time() - at) > FRESH:
            return None
        return inner

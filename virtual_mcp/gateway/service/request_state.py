"""The `requestState` the gateway gives a 2026-07-28 caller with an `input_required` result: sealed, so that only
this gateway can read it, and bound to what it was issued for.

It is AES-256-GCM over a small JSON document: the caller (its subject), the endpoint, the method, the tool or
prompt name or resource URI, a digest of the arguments, an expiry, a one-time id, and what the gateway needs to go
on (the handle of a held call, or a backend's own state and which backend). Opening it checks each of these:
a state that was altered, issued to someone else, presented with another request, expired, or presented a second
time is refused with a message saying which. A backend's own `requestState` therefore never reaches the caller in
the clear, and a caller cannot send one backend's state to another.

The key is derived from the master key when the gateway has one (`serve`): every replica sharing the master key
opens what another sealed, so a retry may land on any of them. Without one (local mode) it is the process's own,
random at start. Whether a state was used already is known to the whole fleet when the gateway runs with Redis
(`Once`), and to this process otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from virtual_mcp.errors import InvalidParams

_PREFIX = "vmcp1."
_AAD = b"virtual-mcp requestState v1"
_NONCE = 12
_MAX_STATE_CHARS = 64 * 1024
_MAX_SPENT = 100_000  # one-time ids remembered (each until its state expires)


@dataclass(frozen=True, slots=True)
class Issued:
    """What a state is bound to: the request it answers."""

    subject: str
    endpoint: str
    method: str
    target: str  # the tool or prompt name, or the resource URI
    arguments: str  # digest of the arguments

    @staticmethod
    def of(subject: str, endpoint: str, method: str, target: str, arguments: object) -> Issued:
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str).encode()
        return Issued(subject, endpoint, method, target, hashlib.sha256(canonical).hexdigest()[:32])


class Once(Protocol):
    """The fleet's record of one-time ids (fleet/once.py)."""

    async def first(self, one_time: str, expires: float) -> bool | None:
        """True the first time `one_time` is presented anywhere in the fleet, False after; None if it cannot say."""
        ...


class RequestStates:
    def __init__(
        self, clock: Callable[[], float] = time.time, keys: Sequence[bytes] = (), once: Once | None = None
    ) -> None:
        # Sealed with the first key, opened with any (a master key being rolled out).
        self._aeads = [AESGCM(key) for key in keys] or [AESGCM(AESGCM.generate_key(bit_length=256))]
        self._clock = clock
        self._once = once
        self._spent: dict[str, float] = {}

    def seal(self, issued: Issued, ttl: float, content: Mapping[str, Any]) -> str:
        document = {
            "sub": issued.subject,
            "ep": issued.endpoint,
            "m": issued.method,
            "t": issued.target,
            "a": issued.arguments,
            "exp": self._clock() + ttl,
            "id": base64.urlsafe_b64encode(os.urandom(12)).decode(),
            "c": dict(content),
        }
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aeads[0].encrypt(nonce, json.dumps(document, separators=(",", ":")).encode(), _AAD)
        return _PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def kind(self, state: object, issued: Issued) -> object:
        """What kind of state `state` is (its content's "k"), if it is a good one for `issued`, without using it;
        None otherwise (opening it says why)."""
        try:
            return self._read(state, issued)[1].get("k")
        except InvalidParams:
            return None

    async def open(self, state: object, issued: Issued) -> dict[str, Any]:
        """The content sealed in `state`, once; InvalidParams saying what is wrong otherwise."""
        document, content = self._read(state, issued)
        one_time = str(document.get("id"))
        expires = float(document["exp"])
        if one_time in self._spent:
            raise InvalidParams("requestState was used already; each one answers one retry")
        self._remember(one_time, expires, self._clock())
        if self._once is not None and await self._once.first(one_time, expires) is False:
            raise InvalidParams("requestState was used already; each one answers one retry")
        return content

    def _read(self, state: object, issued: Issued) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(state, str) or not state.startswith(_PREFIX) or len(state) > _MAX_STATE_CHARS:
            raise InvalidParams("requestState was not issued by this gateway")
        raw = state[len(_PREFIX) :]
        document = self._decrypted(raw)
        if document is None:
            raise InvalidParams(
                "requestState was altered, or was issued by another gateway (or a process of this one with another "
                "master key)"
            )
        if document.get("sub") != issued.subject:
            raise InvalidParams("requestState was issued to another caller")
        if (document.get("ep"), document.get("m"), document.get("t")) != (
            issued.endpoint,
            issued.method,
            issued.target,
        ):
            raise InvalidParams("requestState was issued for another request (endpoint, method or name)")
        if document.get("a") != issued.arguments:
            raise InvalidParams("requestState was issued for this request with other arguments")
        if float(document.get("exp", 0)) <= self._clock():
            raise InvalidParams("requestState has expired; send the request again without it")
        content = document.get("c")
        return document, content if isinstance(content, dict) else {}

    def _decrypted(self, raw: str) -> dict[str, Any] | None:
        try:
            sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except ValueError:
            return None
        for aead in self._aeads:
            try:
                document = json.loads(aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _AAD))
            except (ValueError, InvalidTag):
                continue
            return document if isinstance(document, dict) else None
        return None

    def _remember(self, one_time: str, expires: float, now: float) -> None:
        if len(self._spent) >= _MAX_SPENT:
            for key in [k for k, exp in self._spent.items() if exp <= now]:
                del self._spent[key]
            while len(self._spent) >= _MAX_SPENT:  # all still live: the oldest goes (it would expire first)
                del self._spent[next(iter(self._spent))]
        self._spent[one_time] = expires

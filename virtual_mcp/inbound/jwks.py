"""The IdP's signing keys: a JWK Set fetched over HTTP, cached, refetched when an unknown key id shows up.

Rules, all measured with the injected clock:
- keys are fresh for `cache_seconds` after a successful fetch; after that the next verification refetches;
- a token naming a key id we do not hold triggers a refetch (so rotation is followed), but no fetch of any kind
  starts within `min_refetch_seconds` of the last successful one, nor within `failure_backoff_seconds` of a
  failed one: random key ids cannot make the gateway hammer the IdP;
- concurrent verifications that need a fetch share the one in flight (single-flight);
- when a refetch fails, the keys already held stay usable for one more cache window (an IdP blip does not lock
  everybody out), then verification answers "signing keys unavailable".

Only RSA and EC public keys meant for signatures are kept; symmetric ("oct") keys in a JWK Set are ignored, so an
HMAC verification can never be fed from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from virtual_mcp.errors import InvalidToken

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 5.0  # the whole fetch, connect to last byte
MIN_REFETCH_SECONDS = 30.0
FAILURE_BACKOFF_SECONDS = 5.0
MAX_JWKS_BYTES = 512 * 1024
MIN_RSA_BITS = 2048

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

PublicKey = RSAPublicKey | EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str | None
    alg: str | None  # the JWK's own "alg", when it pins one
    key: PublicKey

    def fits(self, alg: str) -> bool:
        """Whether a token signed with `alg` may be checked with this key: the key type decides, not the token."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg in RSA_ALGORITHMS:
            return isinstance(self.key, RSAPublicKey)
        curve = EC_CURVES.get(alg)
        return curve is not None and isinstance(self.key, EllipticCurvePublicKey) and self.key.curve.name == curve


class _FetchFailed(Exception):
    pass


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient,
        cache_seconds: float,
        clock: Callable[[], float] = time.time,
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        failure_backoff_seconds: float = FAILURE_BACKOFF_SECONDS,
    ) -> None:
        self.url = url
        self._http = http
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._min_refetch = min(min_refetch_seconds, cache_seconds)
        self._failure_backoff = failure_backoff_seconds
        self._keys: tuple[SigningKey, ...] | None = None
        self._fetched_at = -math.inf
        self._not_before = -math.inf  # no fetch of any kind starts before this instant
        self._completed = 0  # fetches finished (either way); lets waiters see that one happened while they queued
        self._lock: anyio.Lock | None = None
        self.fetches = 0  # attempts made, for metrics and tests

    async def keys_for(self, kid: str | None, alg: str) -> list[SigningKey]:
        """The keys a token with this `kid` and `alg` may be checked against; never empty (raises InvalidToken)."""
        now = self._clock()
        if now >= self._fetched_at + self._cache_seconds and now >= self._not_before:
            await self._refresh()
        found = self._select(kid, alg)
        if not found and self._clock() >= self._not_before:
            await self._refresh()  # maybe the IdP rotated its keys
            found = self._select(kid, alg)
        if found:
            return found
        if self._usable() is None:
            raise InvalidToken("signing keys unavailable")
        if kid is not None:
            raise InvalidToken(f"no signing key matches kid {show(kid)}")
        raise InvalidToken(f"no signing key for algorithm {alg}")

    def _usable(self) -> tuple[SigningKey, ...] | None:
        # Beyond its cache window a key set is only kept because refetching failed; give it one more window.
        if self._clock() >= self._fetched_at + 2 * self._cache_seconds:
            return None
        return self._keys

    def _select(self, kid: str | None, alg: str) -> list[SigningKey]:
        keys = self._usable() or ()
        return [k for k in keys if (kid is None or k.kid == kid) and k.fits(alg)]

    async def _refresh(self) -> None:
        seen = self._completed
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._completed != seen:
                return  # a fetch finished while we queued for the lock: its outcome is ours
            self.fetches += 1
            try:
                keys = await self._fetch()
            except _FetchFailed as e:
                self._not_before = self._clock() + self._failure_backoff
                self._completed += 1
                state = "keeping the previous keys for now" if self._usable() is not None else "no keys held"
                logger.warning("JWKS fetch from %s failed (%s); %s", self.url, e, state)
                return
            now = self._clock()
            self._keys = keys
            self._fetched_at = now
            self._not_before = now + self._min_refetch
            self._completed += 1
            if not keys:
                logger.warning("JWKS at %s holds no usable signature keys", self.url)

    async def _fetch(self) -> tuple[SigningKey, ...]:
        body = bytearray()
        with anyio.move_on_after(FETCH_TIMEOUT_SECONDS) as scope:
            try:
                async with self._http.stream(
                    "GET", self.url, headers={"accept": "application/json"}, timeout=FETCH_TIMEOUT_SECONDS
                ) as response:
                    if response.status_code != 200:
                        raise _FetchFailed(f"HTTP {response.status_code}")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_JWKS_BYTES:
                            raise _FetchFailed("document too large")
            except httpx.HTTPError as e:
                raise _FetchFailed(type(e).__name__) from None
        if scope.cancelled_caught:
            raise _FetchFailed("timed out")
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchFailed("not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchFailed("not a JWK Set")
        return parse_keys(document["keys"])


def parse_keys(entries: Sequence[Any]) -> tuple[SigningKey, ...]:
    keys = []
    for entry in entries:
        key = _parse_key(entry)
        if key is not None:
            keys.append(key)
    return tuple(keys)


def _parse_key(jwk: Any) -> SigningKey | None:
    if not isinstance(jwk, dict):
        return None
    kid, alg, kty = jwk.get("kid"), jwk.get("alg"), jwk.get("kty")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    key: object
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(jwk)
        else:
            return None  # "oct" above all: a shared secret has no business in a public key set
    except (PyJWTError, ValueError, TypeError, KeyError):
        # The library's message may quote the JWK, private parts included if someone published them: not logged.
        logger.warning("JWKS key %s is malformed; ignored", show(kid) if kid else "without kid")
        return None
    if isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        logger.warning("JWKS key %s is a %d-bit RSA key; ignored", show(kid) if kid else "without kid", key.key_size)
        return None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        return None
    return SigningKey(kid, alg, key)


def show(value: str, limit: int = 40) -> str:
    """A token-supplied string (kid, alg) made safe to quote in a reason or a log line."""
    cleaned = "".join(c if c.isprintable() and c.isascii() else "?" for c in value[:limit])
    return repr(cleaned + ("..." if len(value) > limit else ""))

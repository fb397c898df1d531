"""Verification of IdP-issued JWTs (JWS compact form) presented as bearer tokens.

The token is parsed here rather than by pyjwt's decoder so that every step is explicit: the header's `alg` must be
one of the configured algorithms *and* of the family of the configured key source (asymmetric with a JWKS, HMAC with
a shared secret), and the key that checks the signature must be of the type that algorithm needs. pyjwt supplies the
signature primitives. A token whose header points at or carries a key (`jku`, `x5u`, `jwk`, `x5c`) is refused, as is
one with `crit` (no extension is understood), and header and payload are bounded in size and nesting depth before
they are parsed.

Time claims are checked against the injected clock with the configured leeway. Refusal reasons are short and never
quote the token nor any part of it except the `alg` and `kid` header values.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
from jwt.algorithms import HMACAlgorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError

from virtual_mcp.config.models import JwtSettings
from virtual_mcp.errors import InvalidToken
from virtual_mcp.inbound.jwks import JwksCache, PublicKey, show
from virtual_mcp.json_depth import nests_deeper_than

MAX_TOKEN_CHARS = 16 * 1024
MAX_HEADER_CHARS = 2048  # base64url; a header names an algorithm and a key id, and a few more short values
MAX_DEPTH = {"header": 4, "payload": 16}  # nesting levels of JSON (claims may hold small objects and lists)
# Header parameters by which a token would point at (or carry) the key that checks it (RFC 7515 4.1).
_KEY_POINTERS = ("jku", "jwk", "x5u", "x5c")
MAX_KEYS_TRIED = 8  # without a kid, each compatible key is tried; a JWKS rarely holds more than a few
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ALGORITHMS = get_default_algorithms()


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    subject: str
    teams: frozenset[str]
    audiences: frozenset[str]
    claims: Mapping[str, Any]
    expires_at: float | None

    @property
    def issued_at(self) -> float | None:
        iat = self.claims.get("iat")
        return float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None


class JwtVerifier:
    def __init__(
        self,
        settings: JwtSettings,
        *,
        http: httpx.AsyncClient,
        hmac_secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._audiences = frozenset(settings.audiences)
        configured = set(settings.effective_algorithms) - {"none"}
        self._jwks: JwksCache | None = None
        self._secret: bytes | None = None
        if settings.jwks_url is not None:
            if hmac_secret is not None:
                raise ValueError("an HMAC secret cannot be combined with jwks_url (algorithm confusion)")
            self._algorithms = frozenset(a for a in configured if not a.startswith("HS"))
            self._jwks = JwksCache(
                str(settings.jwks_url), http=http, cache_seconds=settings.jwks_cache_seconds, clock=clock
            )
        else:
            if hmac_secret is None:
                raise ValueError("hs256_secret is configured but its value was not given (hmac_secret)")
            try:
                self._secret = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(hmac_secret)
            except InvalidKeyError:
                raise ValueError("the HMAC secret looks like an asymmetric key; refusing to use it") from None
            self._algorithms = frozenset(a for a in configured if a.startswith("HS"))

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Three base64url segments whose first decodes to a JSON object with an "alg": worth verifying as a JWT."""
        if not _COMPACT.fullmatch(token):
            return False
        try:
            header = _json_object(_b64decode(token.partition(".")[0]), "header")
        except InvalidToken:
            return False
        return isinstance(header.get("alg"), str)

    async def verify(self, token: str) -> VerifiedJwt:
        """The verified identity in `token`, or InvalidToken saying (briefly, without quoting it) why not."""
        header, payload_segment, signature = _split(token)
        alg, kid = _check_header(header)
        if alg not in self._algorithms:
            raise InvalidToken(f"algorithm {show(alg)} is not accepted")
        signing_input = token.rsplit(".", 1)[0].encode("ascii")
        await self._check_signature(alg, kid, signing_input, signature)
        claims = _json_object(_b64decode(payload_segment), "payload")
        self._check_issuer_audience(claims)
        expires_at = self._check_times(claims)
        return VerifiedJwt(
            subject=self._subject(claims),
            teams=self._teams(claims),
            audiences=_audiences(claims),
            claims=MappingProxyType(claims),
            expires_at=expires_at,
        )

    async def _check_signature(self, alg: str, kid: str | None, signing_input: bytes, signature: bytes) -> None:
        algorithm = _ALGORITHMS.get(alg)
        hmac = isinstance(algorithm, HMACAlgorithm)
        keys: list[bytes] | list[PublicKey]
        # Family check before any key is touched: an HMAC token never meets a public key, and vice versa.
        if algorithm is None or hmac != (self._jwks is None):
            raise InvalidToken(f"algorithm {show(alg)} is not accepted")
        if self._jwks is not None:
            keys = [k.key for k in await self._jwks.keys_for(kid, alg)][:MAX_KEYS_TRIED]
        else:
            assert self._secret is not None
            keys = [self._secret]
        if not any(algorithm.verify(signing_input, key, signature) for key in keys):
            raise InvalidToken("signature verification failed")

    def _check_issuer_audience(self, claims: Mapping[str, Any]) -> None:
        if "iss" not in claims:
            raise InvalidToken("missing iss claim")
        if claims["iss"] != self.settings.issuer:
            raise InvalidToken("issuer not accepted")
        if "aud" not in claims:
            raise InvalidToken("missing aud claim")
        if not _audiences(claims) & self._audiences:
            raise InvalidToken("audience not accepted")

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        now, leeway = self._clock(), self.settings.leeway_seconds
        exp = _number(claims, "exp")
        if exp is None:
            raise InvalidToken("missing exp claim")
        if exp <= now - leeway:
            raise InvalidToken("token expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken("token not yet valid (nbf)")
        iat = _number(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise InvalidToken("token issued in the future (iat)")
        return exp

    def _subject(self, claims: Mapping[str, Any]) -> str:
        name = self.settings.subject_claim
        if name not in claims:
            raise InvalidToken(f"missing {name} claim")
        subject = claims[name]
        if not isinstance(subject, str) or not subject.strip():
            raise InvalidToken(f"{name} claim must be a non-empty string")
        return subject

    def _teams(self, claims: Mapping[str, Any]) -> frozenset[str]:
        name = self.settings.teams_claim
        if name is None or claims.get(name) is None:
            return frozenset()
        value = claims[name]
        if isinstance(value, str):
            return frozenset(t for t in re.split(r"[\s,]+", value) if t)
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return frozenset(t for t in value if t)
        raise InvalidToken(f"{name} claim must be a list of strings or a string")


def _split(token: str) -> tuple[dict[str, Any], str, bytes]:
    """Header, payload segment (decoded after the signature is checked) and signature of a compact JWS."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("token too large")
    if not _COMPACT.fullmatch(token):
        raise InvalidToken("malformed token (expected three base64url segments)")
    header_segment, payload_segment, signature_segment = token.split(".")
    if len(header_segment) > MAX_HEADER_CHARS:
        raise InvalidToken("token header too large")
    header = _json_object(_b64decode(header_segment), "header")
    return header, payload_segment, _b64decode(signature_segment)


def _check_header(header: Mapping[str, Any]) -> tuple[str, str | None]:
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise InvalidToken("malformed token header (alg)")
    if alg.lower() == "none":
        raise InvalidToken("unsigned tokens (alg none) are not accepted")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("malformed token header (kid)")
    if "crit" in header or header.get("b64", True) is not True:
        raise InvalidToken("critical header parameters are not supported")
    for name in _KEY_POINTERS:
        if name in header:
            # A token must not choose the key that checks it: keys come from the configured JWKS or secret only.
            raise InvalidToken(f"header parameter {name!r} is not accepted (keys come only from the configuration)")
    return alg, kid


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token (base64)") from None


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    limit = MAX_DEPTH[part]
    if nests_deeper_than(data, limit):
        raise InvalidToken(f"malformed token {part} (nested deeper than {limit} levels)")
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidToken(f"malformed token {part}") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"malformed token {part}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers reading different values of the same member is how confusion attacks start.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: an `exp` of NaN would never expire


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"{name} claim must be a number")
    return float(value)


def _audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset({aud})
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return frozenset(aud)
    raise InvalidToken("aud claim must be a string or a list of strings")

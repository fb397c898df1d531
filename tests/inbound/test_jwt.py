"""JWT verification: signatures with real keys, claims, algorithm confusion, garbage input, refusal reasons."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.inbound.jwt_support import (
    AUDIENCE,
    ISSUER,
    KEYS,
    SUBJECT,
    Clock,
    JwksEndpoint,
    b64,
    claims,
    ec_key,
    hmac_settings,
    http_client,
    jwks_settings,
    public_jwk,
    rsa_key,
    sign,
)
from tests.support import Served, serve
from virtual_mcp.config.models import JwtSettings
from virtual_mcp.errors import InvalidToken
from virtual_mcp.inbound.jwt import JwtVerifier, VerifiedJwt

Make = Callable[..., JwtVerifier]
SECRET = b"a shared secret of at least thirty-two bytes"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client() as client:
        yield client


@pytest.fixture
def make(jwks_server: tuple[Served, JwksEndpoint], http: httpx.AsyncClient, clock: Clock) -> Make:
    """Verifiers against the module's JWKS server, with settings changed as asked."""
    served, _ = jwks_server
    return lambda **changes: JwtVerifier(jwks_settings(served.url, **changes), http=http, clock=clock)


@pytest.fixture
def verifier(make: Make) -> JwtVerifier:
    return make(teams_claim="groups")


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    reason = caught.value.reason
    assert len(token) < 8 or token not in str(caught.value)
    return reason


def hs256(payload: dict[str, Any], secret: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token signed by hand, so any bytes (a PEM public key, say) can be the secret."""
    signing_input = f"{b64(header or {'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# -- valid tokens ---------------------------------------------------------------------------------------------------


async def test_valid_rs256(verifier: JwtVerifier, clock: Clock) -> None:
    token = sign(claims(clock, groups=["platform-engineering", "sre"]), rsa_key("a"))
    result = await verifier.verify(token)
    assert isinstance(result, VerifiedJwt)
    assert result.subject == SUBJECT
    assert result.teams == {"platform-engineering", "sre"}
    assert result.audiences == {AUDIENCE}
    assert result.expires_at == clock.now + 300
    assert result.claims["iss"] == ISSUER
    assert JwtVerifier.looks_like_jwt(token)


async def test_valid_es256(verifier: JwtVerifier, clock: Clock) -> None:
    token = sign(claims(clock), ec_key("e"), alg="ES256", kid="e1")
    assert (await verifier.verify(token)).subject == SUBJECT


async def test_hs256_with_shared_secret(clock: Clock) -> None:
    async with http_client() as http:
        verifier = JwtVerifier(hmac_settings(), http=http, hmac_secret=SECRET, clock=clock)
        assert (await verifier.verify(sign(claims(clock), SECRET, alg="HS256", kid=None))).subject == SUBJECT
        wrong = sign(claims(clock), b"another secret, also thirty-two bytes long", alg="HS256", kid=None)
        assert await refused(verifier, wrong) == "signature verification failed"


# -- signatures and keys --------------------------------------------------------------------------------------------


async def test_wrong_signature(verifier: JwtVerifier, clock: Clock) -> None:
    # Same kid, other key: the signature does not verify.
    assert await refused(verifier, sign(claims(clock), rsa_key("b"))) == "signature verification failed"
    # A payload swapped under a valid signature.
    header, _, signature = sign(claims(clock), rsa_key("a")).split(".")
    forged = f"{header}.{b64(claims(clock, sub='mallory@northwind.example'))}.{signature}"
    assert await refused(verifier, forged) == "signature verification failed"


async def test_key_type_must_fit_the_algorithm(verifier: JwtVerifier, clock: Clock) -> None:
    # An ES256 token naming the RSA key, and an RS256 token naming the EC key: no key of the right type.
    assert "no signing key matches kid 'k1'" in await refused(
        verifier, sign(claims(clock), ec_key("e"), alg="ES256", kid="k1")
    )
    assert "no signing key matches kid 'e1'" in await refused(verifier, sign(claims(clock), rsa_key("a"), kid="e1"))


async def test_key_headers_pointing_elsewhere_are_never_followed(verifier: JwtVerifier, clock: Clock) -> None:
    attacker = JwksEndpoint([public_jwk("evil", rsa_key("b"))])
    async with serve(attacker.app) as served:
        token = sign(claims(clock), rsa_key("b"), kid="evil", jku=f"{served.url}/jwks")
        assert (
            await refused(verifier, token)
            == "header parameter 'jku' is not accepted (keys come only from the configuration)"
        )
    assert attacker.fetches == 0


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
async def test_a_token_naming_or_carrying_a_key_is_refused_even_when_its_signature_is_good(
    verifier: JwtVerifier, clock: Clock, name: str
) -> None:
    """Signed by the configured key, yet refused: the README promises a token that points at a key is never
    accepted, not just that the pointer is not followed (a verifier elsewhere in the chain might follow it)."""
    value: Any = {
        "jku": "https://evil.example/jwks",
        "x5u": "https://evil.example/cert.pem",
        "jwk": public_jwk(None, rsa_key("b")),
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    }[name]
    token = sign(claims(clock), rsa_key("a"), **{name: value})
    assert (
        await refused(verifier, token)
        == f"header parameter {name!r} is not accepted (keys come only from the configuration)"
    )
    assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT


@pytest.mark.parametrize(
    ("part", "text", "reason"),
    [
        ("header", '{"alg": "RS256", "kid": "k1", "x": ' + "[" * 5000 + "]" * 5000 + "}", "token header too large"),
        (
            "header",
            '{"alg": "RS256", "x": ' + "[" * 400 + "]" * 400 + "}",
            "malformed token header (nested deeper than 4 levels)",
        ),
        (
            "payload",
            '{"sub": "a", "x": ' + "[" * 3000 + "]" * 3000 + "}",
            "malformed token payload (nested deeper than 16 levels)",
        ),
    ],
)
async def test_deeply_nested_header_or_payload_is_a_malformed_token_not_a_crash(
    verifier: JwtVerifier, clock: Clock, part: str, text: str, reason: str
) -> None:
    """json.loads recursed into these until RecursionError (an unauthenticated 500 with a traceback)."""
    header = text if part == "header" else '{"alg": "RS256", "kid": "k1"}'
    payload = text if part == "payload" else '{"sub": "a"}'
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    key = rsa_key("a")
    signature = jwt.get_algorithm_by_name("RS256").sign(signing_input.encode(), key)
    assert await refused(verifier, f"{signing_input}.{b64(signature)}") == reason


# -- algorithms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
async def test_alg_none_is_refused(verifier: JwtVerifier, clock: Clock, alg: str, signature: str) -> None:
    token = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims(clock))}.{signature}"
    assert JwtVerifier.looks_like_jwt(token)
    assert await refused(verifier, token) == "unsigned tokens (alg none) are not accepted"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(verifier: JwtVerifier, clock: Clock) -> None:
    """The classic confusion: the public key, which anyone has, used as an HMAC secret."""
    pem = rsa_key("a").public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    token = hs256(claims(clock), pem, {"alg": "HS256", "kid": "k1"})
    assert await refused(verifier, token) == "algorithm 'HS256' is not accepted"


async def test_confusion_is_refused_even_if_the_settings_allowed_both_families(clock: Clock) -> None:
    """Settings are validated against mixing families; the verifier does not rely on that."""
    pem = rsa_key("a").public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    endpoint = JwksEndpoint(KEYS)
    async with serve(endpoint.app) as served, http_client() as http:
        good = jwks_settings(served.url)
        mixed = JwtSettings.model_construct(**{**dict(good), "algorithms": ["RS256", "HS256"]})
        verifier = JwtVerifier(mixed, http=http, clock=clock)
        token = hs256(claims(clock), pem, {"alg": "HS256", "kid": "k1"})
        assert await refused(verifier, token) == "algorithm 'HS256' is not accepted"

        mixed_hmac = JwtSettings.model_construct(**{**dict(hmac_settings()), "algorithms": ["HS256", "RS256"]})
        verifier = JwtVerifier(mixed_hmac, http=http, hmac_secret=SECRET, clock=clock)
        assert await refused(verifier, sign(claims(clock), rsa_key("a"))) == "algorithm 'RS256' is not accepted"
    assert endpoint.fetches == 0


async def test_rs256_against_hmac_configuration_is_refused(clock: Clock) -> None:
    async with http_client() as http:
        verifier = JwtVerifier(hmac_settings(), http=http, hmac_secret=SECRET, clock=clock)
        assert await refused(verifier, sign(claims(clock), rsa_key("a"))) == "algorithm 'RS256' is not accepted"


async def test_only_configured_algorithms(make: Make, clock: Clock) -> None:
    verifier = make(algorithms=["ES256"])
    assert await refused(verifier, sign(claims(clock), rsa_key("a"))) == "algorithm 'RS256' is not accepted"
    assert (await verifier.verify(sign(claims(clock), ec_key("e"), alg="ES256", kid="e1"))).subject == SUBJECT


async def test_critical_headers_are_refused(verifier: JwtVerifier, clock: Clock) -> None:
    token = sign(claims(clock), rsa_key("a"), crit=["exp"], exp=1)
    assert await refused(verifier, token) == "critical header parameters are not supported"


def test_unusable_secrets_are_refused_at_construction() -> None:
    http: Any = None
    pem = rsa_key("a").public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="asymmetric"):
        JwtVerifier(hmac_settings(), http=http, hmac_secret=pem)
    with pytest.raises(ValueError, match="not given"):
        JwtVerifier(hmac_settings(), http=http)
    with pytest.raises(ValueError, match="confusion"):
        JwtVerifier(jwks_settings("http://127.0.0.1:9"), http=http, hmac_secret=SECRET)


# -- claims ---------------------------------------------------------------------------------------------------------


async def test_issuer(verifier: JwtVerifier, clock: Clock) -> None:
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, iss="https://evil.example"), key)) == "issuer not accepted"
    assert await refused(verifier, sign(claims(clock, iss=None), key)) == "missing iss claim"


async def test_audience(verifier: JwtVerifier, clock: Clock) -> None:
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, aud="https://other.example"), key)) == "audience not accepted"
    assert await refused(verifier, sign(claims(clock, aud=["https://a.example"]), key)) == "audience not accepted"
    assert await refused(verifier, sign(claims(clock, aud=None), key)) == "missing aud claim"
    assert await refused(verifier, sign(claims(clock, aud=[AUDIENCE, 7]), key)) == (
        "aud claim must be a string or a list of strings"
    )
    result = await verifier.verify(sign(claims(clock, aud=["https://other.example", AUDIENCE]), key))
    assert result.audiences == {"https://other.example", AUDIENCE}


async def test_any_configured_audience(make: Make, clock: Clock) -> None:
    verifier = make(audience=["https://first.example", AUDIENCE])
    assert (await verifier.verify(sign(claims(clock, aud=AUDIENCE), rsa_key("a")))).audiences == {AUDIENCE}


async def test_expiry_with_leeway(verifier: JwtVerifier, clock: Clock) -> None:
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, exp=clock.now - 31), key)) == "token expired"
    assert await refused(verifier, sign(claims(clock, exp=clock.now - 30), key)) == "token expired"
    assert (await verifier.verify(sign(claims(clock, exp=clock.now - 29), key))).expires_at == clock.now - 29
    token = sign(claims(clock), key)
    clock.advance(329)
    assert (await verifier.verify(token)).subject == SUBJECT
    clock.advance(1)
    assert await refused(verifier, token) == "token expired"


async def test_not_before_and_issued_at_with_leeway(verifier: JwtVerifier, clock: Clock) -> None:
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, nbf=clock.now + 31), key)) == "token not yet valid (nbf)"
    assert (await verifier.verify(sign(claims(clock, nbf=clock.now + 29), key))).subject == SUBJECT
    assert await refused(verifier, sign(claims(clock, iat=clock.now + 31), key)) == "token issued in the future (iat)"
    assert (await verifier.verify(sign(claims(clock, iat=clock.now + 29), key))).subject == SUBJECT
    token = sign(claims(clock, nbf=clock.now + 100), key)
    clock.advance(71)
    assert (await verifier.verify(token)).subject == SUBJECT


async def test_no_leeway(make: Make, clock: Clock) -> None:
    verifier = make(leeway_seconds=0)
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, exp=clock.now), key)) == "token expired"
    assert await refused(verifier, sign(claims(clock, nbf=clock.now + 1), key)) == "token not yet valid (nbf)"
    assert (await verifier.verify(sign(claims(clock, exp=clock.now + 1), key))).subject == SUBJECT


@pytest.mark.parametrize(
    ("exp", "reason"),
    [(None, "missing exp claim"), ("soon", "exp claim must be a number"), (True, "exp claim must be a number")],
)
async def test_exp_is_required_and_numeric(verifier: JwtVerifier, clock: Clock, exp: Any, reason: str) -> None:
    assert await refused(verifier, sign(claims(clock, exp=exp), rsa_key("a"))) == reason


async def test_nan_exp_never_means_forever(verifier: JwtVerifier, clock: Clock) -> None:
    assert await refused(verifier, sign(claims(clock, exp=float("nan")), rsa_key("a"))) == "malformed token payload"


async def test_subject(verifier: JwtVerifier, clock: Clock) -> None:
    key = rsa_key("a")
    assert await refused(verifier, sign(claims(clock, sub=None), key)) == "missing sub claim"
    assert await refused(verifier, sign(claims(clock, sub=42), key)) == "sub claim must be a non-empty string"
    assert await refused(verifier, sign(claims(clock, sub=" "), key)) == "sub claim must be a non-empty string"


async def test_custom_subject_claim(make: Make, clock: Clock) -> None:
    verifier = make(subject_claim="email")
    key = rsa_key("a")
    assert (await verifier.verify(sign(claims(clock, email="bob@northwind.example"), key))).subject == (
        "bob@northwind.example"
    )
    assert await refused(verifier, sign(claims(clock), key)) == "missing email claim"


@pytest.mark.parametrize(
    ("groups", "teams"),
    [
        (["platform-engineering", "sre"], {"platform-engineering", "sre"}),
        ("platform-engineering sre", {"platform-engineering", "sre"}),
        ("platform-engineering, sre,,", {"platform-engineering", "sre"}),
        ("", set()),
        ([], set()),
        (None, set()),
    ],
)
async def test_teams_claim(verifier: JwtVerifier, clock: Clock, groups: Any, teams: set[str]) -> None:
    assert (await verifier.verify(sign(claims(clock, groups=groups), rsa_key("a")))).teams == teams


async def test_malformed_teams_claim(verifier: JwtVerifier, clock: Clock) -> None:
    reason = "groups claim must be a list of strings or a string"
    assert await refused(verifier, sign(claims(clock, groups=7), rsa_key("a"))) == reason
    assert await refused(verifier, sign(claims(clock, groups=["sre", 7]), rsa_key("a"))) == reason


async def test_teams_ignored_without_teams_claim(make: Make, clock: Clock) -> None:
    verifier = make()
    assert (await verifier.verify(sign(claims(clock, groups=["sre"]), rsa_key("a")))).teams == frozenset()


# -- garbage --------------------------------------------------------------------------------------------------------


def garbage(clock: Clock) -> list[tuple[str, str]]:
    """Malformed tokens and the reason each is refused with."""
    good = sign(claims(clock), rsa_key("a"))
    header, payload, signature = good.split(".")
    segments = "malformed token (expected three base64url segments)"
    duplicate_alg = b64(b'{"alg": "RS256", "alg": "HS256"}')
    nul_alg = b64({"alg": "RS256\x00", "kid": "k1"})
    array_payload = jwt.PyJWS().encode(b"[]", rsa_key("a"), algorithm="RS256", headers={"kid": "k1"})
    return [
        ("", segments),
        ("abc", segments),
        ("a.b", segments),
        ("...", segments),
        (f"{good}.{signature}", segments),
        (f"{header}.{payload}.{signature}=", segments),
        ("é.é.é", segments),
        ("Bearer " + good, segments),
        ("a.b.c", "malformed token (base64)"),
        (f"{header}.{payload}.x", "malformed token (base64)"),
        (f"{b64(b'not json')}.{payload}.{signature}", "malformed token header"),
        (f"{b64(b'[1, 2]')}.{payload}.{signature}", "malformed token header"),
        (f"{duplicate_alg}.{payload}.{signature}", "malformed token header"),
        (f"{b64({'typ': 'JWT'})}.{payload}.{signature}", "malformed token header (alg)"),
        (f"{b64({'alg': 7})}.{payload}.{signature}", "malformed token header (alg)"),
        (f"{b64({'alg': 'RS256', 'kid': 1})}.{payload}.{signature}", "malformed token header (kid)"),
        (f"{nul_alg}.{payload}.{signature}", "algorithm 'RS256?' is not accepted"),
        (f"{b64({'alg': 'RS256', 'kid': 'k1'})}.{payload}.{signature}", "signature verification failed"),
        (array_payload, "malformed token payload"),
        (f"{header}.{payload * 400}.{signature}", "token too large"),
    ]


async def test_garbage_is_refused(verifier: JwtVerifier, clock: Clock) -> None:
    for token, expected in garbage(clock):
        assert await refused(verifier, token) == expected, token[:40]


async def test_garbage_does_not_look_like_a_jwt(clock: Clock) -> None:
    for token in ["", "abc", "a.b.c", "vmcp_abcdef", "...", "é.é.é", f"{b64({'typ': 'JWT'})}.e30.", "a.b.c.d"]:
        assert not JwtVerifier.looks_like_jwt(token)
    assert JwtVerifier.looks_like_jwt(sign(claims(clock), rsa_key("a")))


async def test_huge_token(verifier: JwtVerifier, clock: Clock) -> None:
    assert await refused(verifier, "a" * 1_000_000) == "token too large"
    huge = sign(claims(clock, padding="x" * 100_000), rsa_key("a"))
    assert JwtVerifier.looks_like_jwt(huge)  # it is one: the verifier, not the router, refuses it
    assert await refused(verifier, huge) == "token too large"


async def test_reasons_never_quote_the_token(
    verifier: JwtVerifier, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = rsa_key("a")
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    tokens = [
        *(token for token, _ in garbage(clock)),
        sign(claims(clock), rsa_key("b")),
        sign(claims(clock, exp=clock.now - 100), key),
        sign(claims(clock, aud="x"), key),
        sign(claims(clock, iss="x"), key),
        sign(claims(clock, sub=None), key),
        sign(claims(clock), key, kid="unknown"),
        hs256(claims(clock), pem, {"alg": "HS256", "kid": "k1"}),
    ]
    for token in tokens:
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(token)
        text = f"{caught.value} {caught.value.reason} {caught.value.message} {caught.value.data!r}"
        parts = [p for p in token.split(".") if len(p) > 8]
        assert token not in text or not token
        for part in parts:
            assert part not in text
            assert part not in caplog.text

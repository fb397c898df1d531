"""The JWKS cache against a real endpoint on loopback: rotation, rate limits, single-flight, outages."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from tests.inbound.jwt_support import (
    SUBJECT,
    Clock,
    JwksEndpoint,
    claims,
    ec_key,
    http_client,
    jwks_settings,
    jwks_verifier,
    public_jwk,
    rsa_key,
    sign,
)
from tests.support import bind, serve
from virtual_mcp.errors import InvalidToken
from virtual_mcp.inbound.jwks import MIN_REFETCH_SECONDS, SigningKey, parse_keys
from virtual_mcp.inbound.jwt import JwtVerifier

CACHE = 300  # jwks_cache_seconds default
BACKOFF = 5  # FAILURE_BACKOFF_SECONDS


async def reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return caught.value.reason


async def test_keys_are_cached(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        for _ in range(3):
            assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT
            clock.advance(CACHE / 4)
        assert endpoint.fetches == 1
        clock.advance(CACHE / 4)  # the cache window is over: the next verification refetches
        await verifier.verify(sign(claims(clock), rsa_key("a")))
        assert endpoint.fetches == 2


async def test_rotation_is_followed_with_one_refetch_and_no_stampede(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        await verifier.verify(sign(claims(clock), rsa_key("a")))
        assert endpoint.fetches == 1
        # The IdP publishes a second key; a token signed with it arrives after the refetch cool-down.
        endpoint.keys = [public_jwk("k1", rsa_key("a")), public_jwk("k2", rsa_key("b"))]
        clock.advance(MIN_REFETCH_SECONDS)
        assert (await verifier.verify(sign(claims(clock), rsa_key("b"), kid="k2"))).subject == SUBJECT
        assert endpoint.fetches == 2
        # More unknown kids right after: refused from the cache, the IdP is not asked again.
        for kid in ("k3", "k4", "k5"):
            clock.advance(1)
            assert await reason(verifier, sign(claims(clock), rsa_key("c"), kid=kid)) == (
                f"no signing key matches kid {kid!r}"
            )
        assert endpoint.fetches == 2
        # Both keys keep working without fetches.
        await verifier.verify(sign(claims(clock), rsa_key("a")))
        await verifier.verify(sign(claims(clock), rsa_key("b"), kid="k2"))
        assert endpoint.fetches == 2


async def test_unknown_kid_inside_the_cool_down_is_refused_then_accepted(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        await verifier.verify(sign(claims(clock), rsa_key("a")))
        endpoint.keys = [public_jwk("k2", rsa_key("b"))]
        token = sign(claims(clock), rsa_key("b"), kid="k2")
        clock.advance(MIN_REFETCH_SECONDS - 1)
        assert await reason(verifier, token) == "no signing key matches kid 'k2'"
        assert endpoint.fetches == 1
        clock.advance(1)
        assert (await verifier.verify(token)).subject == SUBJECT
        assert endpoint.fetches == 2
        # k1 was withdrawn by the IdP: it is refused now (after at most one more cool-down's refetch).
        clock.advance(MIN_REFETCH_SECONDS)
        assert await reason(verifier, sign(claims(clock), rsa_key("a"))) == "no signing key matches kid 'k1'"
        assert endpoint.fetches == 3


async def test_concurrent_verifications_share_one_fetch(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        await verifier.verify(sign(claims(clock), rsa_key("a")))
        endpoint.keys = [public_jwk("k1", rsa_key("a")), public_jwk("k2", rsa_key("b"))]
        endpoint.entered = anyio.Event()
        endpoint.gate = anyio.Event()
        clock.advance(MIN_REFETCH_SECONDS)
        token = sign(claims(clock), rsa_key("b"), kid="k2")
        subjects: list[str] = []

        async def one() -> None:
            subjects.append((await verifier.verify(token)).subject)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
                await endpoint.entered.wait()  # the one fetch is at the server, held there
                endpoint.gate.set()
        assert subjects == [SUBJECT] * 20
        assert endpoint.fetches == 2


async def test_cold_start_concurrency_is_one_fetch(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        endpoint.gate = anyio.Event()
        token = sign(claims(clock), rsa_key("a"))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(verifier.verify, token)
                await endpoint.entered.wait()
                endpoint.gate.set()
        assert endpoint.fetches == 1


async def test_server_down_then_back(clock: Clock) -> None:
    endpoint = JwksEndpoint([public_jwk("k1", rsa_key("a"))])
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens: connections are refused
    token = sign(claims(clock, exp=clock.now + 3600), rsa_key("a"))
    async with http_client() as http:
        verifier = JwtVerifier(jwks_settings(f"http://127.0.0.1:{port}"), http=http, clock=clock)
        assert verifier.jwks is not None
        assert await reason(verifier, token) == "signing keys unavailable"
        assert verifier.jwks.fetches == 1
        # Within the back-off nothing is tried: a dead IdP is not hammered by every request.
        assert await reason(verifier, token) == "signing keys unavailable"
        assert verifier.jwks.fetches == 1
        async with serve(endpoint.app, bind(port)):
            clock.advance(BACKOFF - 1)
            assert await reason(verifier, token) == "signing keys unavailable"
            assert endpoint.fetches == 0
            clock.advance(1)
            assert (await verifier.verify(token)).subject == SUBJECT
            assert endpoint.fetches == 1


async def test_failing_refresh_keeps_the_keys_for_one_more_window(clock: Clock) -> None:
    endpoint = JwksEndpoint([public_jwk("k1", rsa_key("a"))])
    sock = bind()
    port = sock.getsockname()[1]
    async with http_client() as http:
        verifier = JwtVerifier(jwks_settings(f"http://127.0.0.1:{port}"), http=http, clock=clock)
        assert verifier.jwks is not None
        async with serve(endpoint.app, sock):
            await verifier.verify(sign(claims(clock), rsa_key("a")))
        # The IdP is gone. Past the cache window the refresh fails, but the keys held still verify...
        clock.advance(CACHE)
        assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT
        assert verifier.jwks.fetches == 2
        # ...for one more window only.
        clock.advance(CACHE)
        assert await reason(verifier, sign(claims(clock), rsa_key("a"))) == "signing keys unavailable"
        async with serve(endpoint.app, bind(port)):
            clock.advance(BACKOFF)
            assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT
        assert endpoint.fetches == 2


async def test_bad_documents_mean_no_keys(clock: Clock) -> None:
    async with jwks_verifier([], clock) as (verifier, endpoint, _):
        for body in [b"<html>oops</html>", b'{"keys": "none"}', b"[]", b"x" * (600 * 1024)]:
            endpoint.body = body
            assert await reason(verifier, sign(claims(clock), rsa_key("a"))) == "signing keys unavailable"
            clock.advance(BACKOFF)
        assert endpoint.fetches == 4


async def test_http_error_means_no_keys(clock: Clock) -> None:
    async with jwks_verifier([public_jwk("k1", rsa_key("a"))], clock) as (verifier, endpoint, _):
        endpoint.failing = True
        assert await reason(verifier, sign(claims(clock), rsa_key("a"))) == "signing keys unavailable"
        endpoint.failing = False
        clock.advance(BACKOFF)
        assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT


async def test_tokens_without_kid_try_the_compatible_keys(clock: Clock) -> None:
    keys = [public_jwk(None, ec_key("e")), public_jwk(None, rsa_key("a")), public_jwk(None, rsa_key("b"))]
    async with jwks_verifier(keys, clock) as (verifier, _, _):
        assert (await verifier.verify(sign(claims(clock), rsa_key("b"), kid=None))).subject == SUBJECT
        assert (await verifier.verify(sign(claims(clock), ec_key("e"), alg="ES256", kid=None))).subject == SUBJECT
        assert await reason(verifier, sign(claims(clock), rsa_key("c"), kid=None)) == "signature verification failed"


async def test_a_key_pinned_to_an_algorithm_serves_only_that_one(clock: Clock) -> None:
    keys = [public_jwk("k1", rsa_key("a"), alg="RS256")]
    async with jwks_verifier(keys, clock, algorithms=["RS256", "PS256"]) as (verifier, _, _):
        assert (await verifier.verify(sign(claims(clock), rsa_key("a")))).subject == SUBJECT
        token = sign(claims(clock), rsa_key("a"), alg="PS256")
        assert await reason(verifier, token) == "no signing key matches kid 'k1'"


def test_only_public_signature_keys_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    private: dict[str, Any] = public_jwk("private", rsa_key("a"))
    private["d"] = "c2VjcmV0LXByaXZhdGUtcGFydA"  # malformed private part: the key is refused, nothing logged of it
    entries: list[Any] = [
        public_jwk("rsa", rsa_key("a")),
        public_jwk("ec", ec_key("e")),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        public_jwk("enc", rsa_key("a"), use="enc"),
        public_jwk("ops", rsa_key("a"), key_ops=["encrypt"]),
        public_jwk("small", rsa_key("small", 1024)),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        public_jwk(7, rsa_key("a")),  # type: ignore[arg-type]
        "not an object",
        private,
    ]
    caplog.set_level(logging.DEBUG)
    keys = parse_keys(entries)
    assert "'private'" in caplog.text
    assert private["d"] not in caplog.text
    assert [k.kid for k in keys] == ["rsa", "ec"]
    assert all(isinstance(k, SigningKey) for k in keys)
    assert keys[0].fits("RS256") and keys[0].fits("PS256") and not keys[0].fits("ES256")
    assert keys[1].fits("ES256") and not keys[1].fits("ES384") and not keys[1].fits("RS256")
    assert not keys[0].fits("HS256") and not keys[1].fits("HS256")

"""Real keys, a real JWKS endpoint on loopback and a hand-driven clock for the JWT verifier tests."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support import Served, serve
from virtual_mcp.config.models import JwtSettings
from virtual_mcp.inbound.jwt import JwtVerifier

ISSUER = "https://idp.northwind.example"
AUDIENCE = "https://mcp.northwind.example"
SUBJECT = "alice@northwind.example"
START = 1_800_000_000.0


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One key per name for the whole run: RSA generation is the slow part of these tests."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(kid: str | None, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, "use": "sig", **extra}


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def claims(clock: Clock, **changes: Any) -> dict[str, Any]:
    """Valid claims at the clock's time; a change to None removes the claim."""
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": clock.now, "exp": clock.now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = "k1", **headers: Any) -> str:
    extra = {**({"kid": kid} if kid is not None else {}), **headers}
    return jwt.encode(payload, key, algorithm=alg, headers=extra or None)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class JwksEndpoint:
    """Serves `keys` at /jwks, counting fetches; `failing` answers 500, `gate` holds answers until set."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        self.failing = False
        self.body: bytes | None = None
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.app = Starlette(routes=[Route("/jwks", self.jwks)])

    async def jwks(self, request: Request) -> Response:
        self.fetches += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            return JSONResponse({"error": "down"}, status_code=500)
        if self.body is not None:
            return Response(self.body, media_type="application/json")
        return JSONResponse({"keys": self.keys})


KEYS = [public_jwk("k1", rsa_key("a")), public_jwk("e1", ec_key("e"))]


def jwks_settings(url: str, **changes: Any) -> JwtSettings:
    return JwtSettings(**{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": f"{url}/jwks", **changes})


def hmac_settings(**changes: Any) -> JwtSettings:
    return JwtSettings(
        **{"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret": "tfy-secret://acme:idp:hmac", **changes}
    )


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


@asynccontextmanager
async def jwks_verifier(
    keys: list[dict[str, Any]], clock: Clock, **changes: Any
) -> AsyncIterator[tuple[JwtVerifier, JwksEndpoint, Served]]:
    endpoint = JwksEndpoint(keys)
    async with serve(endpoint.app) as served, http_client() as http:
        verifier = JwtVerifier(jwks_settings(served.url, **changes), http=http, clock=clock)
        yield verifier, endpoint, served

"""The OAuth test server (tests/oauth_server.py, oidc-provider 9) does what the gateway's OAuth tests rely on,
checked with plain httpx and pyjwt."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import jwt
import pytest

from tests.oauth_server import (
    ACCOUNT,
    CC_BASIC_CLIENT_ID,
    CC_CLIENT_ID,
    CODE_CLIENT_ID,
    REDIRECT_URI,
    AuthServer,
    authorization_server,
    pkce_pair,
)
from tests.sensitive import mark

RESOURCE = "https://tools.northwind.example/mcp"
DEFAULT_RESOURCE = "https://default.northwind.example/mcp"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one authorization server serves the whole module (starting Node is the slow part)."""
    return "asyncio"


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[AuthServer]:
    async with authorization_server(default_resource=DEFAULT_RESOURCE, access_token_ttl=120) as running:
        yield running


@pytest.fixture
async def auth(server: AuthServer) -> AuthServer:
    """The module's server with zeroed counters and default behaviour."""
    await server.reset()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def verify(auth: AuthServer, http: httpx.AsyncClient, token: str, audience: str) -> dict[str, Any]:
    """Checks an access token against the server's published JWKS, as a resource server would."""
    keys = jwt.PyJWKSet.from_dict((await http.get(auth.jwks_uri)).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(key for key in keys.keys if key.key_id == kid)
    return dict(jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=auth.issuer))


async def client_credentials(
    auth: AuthServer, http: httpx.AsyncClient, resource: str | None = RESOURCE, **extra: str
) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_id": CC_CLIENT_ID, "client_secret": auth.secret(CC_CLIENT_ID)}
    if resource is not None:
        form["resource"] = resource
    return await http.post(auth.token_endpoint, data={**form, **extra})


async def code_flow(auth: AuthServer, http: httpx.AsyncClient, resource: str = RESOURCE) -> dict[str, Any]:
    """Authorization code + PKCE through the headless login; returns the token response."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    answer = await auth.login(auth.authorization_url(challenge, state, resource=resource))
    assert answer["state"] == state
    response = await http.post(
        auth.token_endpoint,
        data={"grant_type": "authorization_code", "code": answer["code"], "code_verifier": verifier}
        | {"redirect_uri": REDIRECT_URI, "resource": resource},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert response.status_code == 200, response.text
    tokens = dict(response.json())
    mark(tokens["access_token"], tokens["refresh_token"])
    return tokens


async def test_client_credentials_gives_an_rs256_jwt_for_the_requested_resource(
    auth: AuthServer, http: httpx.AsyncClient
) -> None:
    response = await client_credentials(auth, http, scope="mcp:read")
    assert response.status_code == 200, response.text
    body = response.json()
    mark(body["access_token"])
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    assert body["scope"] == "mcp:read"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "RS256"
    claims = await verify(auth, http, body["access_token"], RESOURCE)
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == CC_CLIENT_ID
    assert claims["exp"] - claims["iat"] == 120


async def test_client_secret_basic_and_the_default_resource(auth: AuthServer, http: httpx.AsyncClient) -> None:
    response = await http.post(
        auth.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=(CC_BASIC_CLIENT_ID, auth.secret(CC_BASIC_CLIENT_ID)),
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    mark(token)
    assert (await verify(auth, http, token, DEFAULT_RESOURCE))["aud"] == DEFAULT_RESOURCE


async def test_a_wrong_secret_is_invalid_client(auth: AuthServer, http: httpx.AsyncClient) -> None:
    response = await http.post(
        auth.token_endpoint,
        data={"grant_type": "client_credentials", "client_id": CC_CLIENT_ID, "client_secret": "not-the-secret"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_token_requests_are_counted_by_grant_type_and_client(auth: AuthServer, http: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await client_credentials(auth, http)).status_code == 200
    await http.post(
        auth.token_endpoint, data={"grant_type": "client_credentials"}, auth=(CC_BASIC_CLIENT_ID, "wrong-secret")
    )
    stats = await auth.stats()
    assert stats["token"]["total"] == 3
    assert stats["token"]["by_grant_type"] == {"client_credentials": 3}
    assert stats["token"]["by_client"] == {CC_CLIENT_ID: 2, CC_BASIC_CLIENT_ID: 1}
    assert stats["token"]["requests"][0]["resource"] == [RESOURCE]
    assert await auth.token_requests("refresh_token") == 0

    await auth.reset()
    assert await auth.token_requests() == 0


async def test_injected_500_then_success(auth: AuthServer, http: httpx.AsyncClient) -> None:
    await auth.behave(token_fail_status=500, token_fail_count=1)
    failed = await client_credentials(auth, http)
    assert failed.status_code == 500
    assert failed.json()["error"] == "server_error"
    assert (await client_credentials(auth, http)).status_code == 200
    assert await auth.token_requests("client_credentials") == 2


async def test_injected_429_carries_retry_after(auth: AuthServer, http: httpx.AsyncClient) -> None:
    await auth.behave(token_fail_status=429, token_fail_count=2)
    for _ in range(2):
        limited = await client_credentials(auth, http)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "0"
        assert limited.json()["error"] == "temporarily_unavailable"
    assert (await client_credentials(auth, http)).status_code == 200
    assert (await auth.behaviour())["token_fail_count"] == 0


async def test_omit_expires_in(auth: AuthServer, http: httpx.AsyncClient) -> None:
    await auth.behave(omit_expires_in=True)
    body = (await client_credentials(auth, http)).json()
    mark(body["access_token"])
    assert "access_token" in body
    assert "expires_in" not in body


async def test_token_delay_outlasts_a_short_client_timeout(auth: AuthServer) -> None:
    await auth.behave(token_delay_ms=2000)
    async with httpx.AsyncClient(timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await client_credentials(auth, impatient)


async def test_unknown_behaviour_switch_is_refused(auth: AuthServer) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        await auth.behave(token_fail_statu=500)


async def test_authorization_code_with_pkce_by_hand(auth: AuthServer, http: httpx.AsyncClient) -> None:
    """The whole flow with plain httpx: authorize, follow redirects with cookies, exchange, refresh, reuse."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    url = auth.authorization_url(challenge, state, resource=RESOURCE, scope="mcp:tools mcp:read")
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        for _ in range(10):
            response = await browser.get(url)
            assert response.is_redirect, response.text
            url = urljoin(url, response.headers["location"])
            if url.startswith(REDIRECT_URI):
                break
        assert any(cookie.name == "_session" for cookie in browser.cookies.jar)
    answer = dict(parse_qsl(urlsplit(url).query))
    assert answer["state"] == state
    assert answer["iss"] == auth.issuer

    exchanged = await http.post(
        auth.token_endpoint,
        data={"grant_type": "authorization_code", "code": answer["code"], "code_verifier": verifier}
        | {"redirect_uri": REDIRECT_URI, "resource": RESOURCE},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert exchanged.status_code == 200, exchanged.text
    first = exchanged.json()
    mark(first["access_token"], first["refresh_token"])
    assert first["scope"] == "mcp:tools mcp:read"
    claims = await verify(auth, http, first["access_token"], RESOURCE)
    assert claims["sub"] == ACCOUNT
    assert claims["client_id"] == CODE_CLIENT_ID

    refreshed = await http.post(
        auth.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "resource": RESOURCE},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    mark(second["access_token"], second["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"], "refresh tokens must rotate"
    assert (await verify(auth, http, second["access_token"], RESOURCE))["sub"] == ACCOUNT

    reused = await http.post(
        auth.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"

    stats = await auth.stats()
    assert stats["token"]["by_grant_type"] == {"authorization_code": 1, "refresh_token": 2}
    assert stats["authorization"]["total"] == 1


async def test_refresh_without_resource_keeps_the_granted_one(auth: AuthServer, http: httpx.AsyncClient) -> None:
    tokens = await code_flow(auth, http)
    refreshed = await http.post(
        auth.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert refreshed.status_code == 200, refreshed.text
    mark(refreshed.json()["access_token"], refreshed.json()["refresh_token"])
    assert (await verify(auth, http, refreshed.json()["access_token"], RESOURCE))["aud"] == RESOURCE


async def test_a_plain_pkce_challenge_is_refused(auth: AuthServer) -> None:
    verifier = secrets.token_urlsafe(48)
    answer = await auth.login(auth.authorization_url(verifier, "s1", code_challenge_method="plain"))
    assert answer["error"] == "invalid_request"
    assert "code_challenge_method" in answer["error_description"]
    assert "code" not in answer


async def test_pkce_is_required(auth: AuthServer) -> None:
    url = auth.authorization_url("unused", "s2").replace("&code_challenge=unused&code_challenge_method=S256", "")
    answer = await auth.login(url)
    assert answer["error"] == "invalid_request"
    assert "PKCE" in answer["error_description"]


async def test_a_wrong_code_verifier_is_invalid_grant(auth: AuthServer, http: httpx.AsyncClient) -> None:
    _, challenge = pkce_pair()
    answer = await auth.login(auth.authorization_url(challenge, "s3", resource=RESOURCE))
    other_verifier, _ = pkce_pair()
    response = await http.post(
        auth.token_endpoint,
        data={"grant_type": "authorization_code", "code": answer["code"], "code_verifier": other_verifier}
        | {"redirect_uri": REDIRECT_URI},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_login_hint_and_interaction_error(auth: AuthServer, http: httpx.AsyncClient) -> None:
    verifier, challenge = pkce_pair()
    bob = "bob@northwind.example"
    answer = await auth.login(auth.authorization_url(challenge, "s4", resource=RESOURCE, login_hint=bob))
    exchanged = await http.post(
        auth.token_endpoint,
        data={"grant_type": "authorization_code", "code": answer["code"], "code_verifier": verifier}
        | {"redirect_uri": REDIRECT_URI, "resource": RESOURCE},
        auth=(CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID)),
    )
    assert exchanged.status_code == 200, exchanged.text
    mark(exchanged.json()["access_token"], exchanged.json()["refresh_token"])
    assert (await verify(auth, http, exchanged.json()["access_token"], RESOURCE))["sub"] == bob

    await auth.behave(interaction_error="access_denied")
    refused = await auth.login(auth.authorization_url(challenge, "s5", resource=RESOURCE))
    assert refused["error"] == "access_denied"
    assert refused["state"] == "s5"


async def test_revocation_is_counted_and_revokes(auth: AuthServer, http: httpx.AsyncClient) -> None:
    tokens = await code_flow(auth, http)
    basic = (CODE_CLIENT_ID, auth.secret(CODE_CLIENT_ID))
    revoked = await http.post(
        auth.revocation_endpoint,
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=basic,
    )
    assert revoked.status_code == 200, revoked.text
    stats = await auth.stats()
    assert stats["revocation"] == {"total": 1, "by_client": {CODE_CLIENT_ID: 1}}

    after = await http.post(
        auth.token_endpoint, data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=basic
    )
    assert after.status_code == 400
    assert after.json()["error"] == "invalid_grant"

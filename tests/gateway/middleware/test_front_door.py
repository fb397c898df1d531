"""Inbound authentication at the front door: 401 challenges, RFC 9728 metadata, tokens and JWTs end to end,
revocation and expiry on the very next request, 403, the managers' admin view."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tests.backends import build_lab
from tests.lab_config import CI, PLATFORM, group, header_auth, remote, write_identities
from tests.security_support import GATEWAY_AUDIENCE, ISSUER, SecureGateway, idp_jwt, secure_gateway
from tests.sensitive import mark
from tests.store_mode import refused_after_revocation
from tests.support import serve
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import BadRequest
from virtual_mcp.gateway.app import create_app
from virtual_mcp.registry import build_registry
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import TokenStore

API_KEY = header_auth(**{"X-Api-Key": "tfy-secret://t:lab:api-key"})


def group_doc(url: str) -> str:
    collaborators = [
        {"subject": f"team:{PLATFORM}", "role_id": "mcp-server-manager"},
        {"subject": "user:bob@northwind.example", "role_id": "viewer"},
    ]
    tools = remote("tools", url, [f"team:{PLATFORM}", "team:idp-only", f"virtualaccount:{CI}"])
    return group("lab", tools, remote("secret-header", url, auth_data=API_KEY), collaborators=collaborators)


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ACCEPT = {"accept": "application/json, text/event-stream"}


@asynccontextmanager
async def front(tmp_path: Path) -> AsyncIterator[SecureGateway]:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config)
        async with secure_gateway(config, tmp_path / "data", {"tfy-secret://t:lab:api-key": "k-123"}) as gw:
            yield gw


async def post(gw: SecureGateway, path: str, bearer: str | None = None, **kwargs: Any) -> httpx2.Response:
    """An `initialize` POST: 200 when the caller gets in.

    httpx2 (the MCP SDK's client) rather than httpx: httpx is the gateway's own upstream client, whose log lines
    are scanned for secrets, and a test that puts a token in a URL on purpose must not pollute that scan.
    """
    headers = {**ACCEPT, **({"authorization": f"Bearer {bearer}"} if bearer else {}), **kwargs.pop("headers", {})}
    async with httpx2.AsyncClient() as http:
        return await http.post(f"{gw.url}{path}", json=INIT, headers=headers, **kwargs)


async def names(gw: SecureGateway, path: str, bearer: str, mode: str = "legacy") -> set[str]:
    async with gw.client(path, bearer, mode=mode) as client:
        return {t.name for t in await client.list_tools()}


async def test_missing_and_invalid_credentials_get_a_challenge(tmp_path: Path) -> None:
    async with front(tmp_path) as gw:
        missing = await post(gw, "/mcp-server/lab/tools/server")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == (
            f'Bearer resource_metadata="{gw.url}/.well-known/oauth-protected-resource/mcp-server/lab/tools/server"'
        )
        assert missing.json()["error"]["message"] == "missing bearer token (Authorization: Bearer ...)"
        for bad in ("vmcp_000000000000_nope", "not-a-jwt", "a.b.c"):
            refused = await post(gw, "/mcp", bad)
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            assert bad not in refused.text and bad not in refused.headers["www-authenticate"]
        basic = await post(gw, "/mcp", headers={"authorization": "Basic YWxpY2U6cHc="})
        assert basic.status_code == 401 and "must be 'Bearer <token>'" in basic.text
        assert "error=" not in basic.headers["www-authenticate"]
        # Token-supplied text in the refusal reason stays printable ASCII (this used to be a 500).
        euro = "eyJhbGciOiLigqwiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln"
        refused = await post(gw, "/mcp", euro)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].isascii()


async def test_a_token_in_the_query_string_is_never_accepted(tmp_path: Path) -> None:
    async with front(tmp_path) as gw:
        token = await gw.token(PrincipalKind.USER, "alice@northwind.example")
        for parameter in ("access_token", "token"):
            refused = await post(gw, f"/mcp?{parameter}={token}")
            assert refused.status_code == 400 and "query string" in refused.text
            assert 'error="invalid_request"' in refused.headers["www-authenticate"]
            # Not even alongside a valid header: the URL may already have leaked into logs.
            both = await post(gw, f"/mcp?{parameter}={token}", token)
            assert both.status_code == 400


async def test_protected_resource_metadata_for_every_endpoint(tmp_path: Path) -> None:
    async with front(tmp_path) as gw, httpx.AsyncClient() as http:
        for path in ("/mcp", "/mcp-server/lab/tools/server", "/mcp-server/lab/secret-header/server"):
            doc = (await http.get(f"{gw.url}/.well-known/oauth-protected-resource{path}")).json()
            assert doc == {
                "resource": f"{gw.url}{path}",
                "authorization_servers": [ISSUER],
                "bearer_methods_supported": ["header"],
                "resource_name": f"virtual-mcp {path}",
            }
        root = (await http.get(f"{gw.url}/.well-known/oauth-protected-resource")).json()
        assert root["resource"] == gw.url and root["authorization_servers"] == [ISSUER]
        assert (await http.get(f"{gw.url}/.well-known/oauth-protected-resource/nope")).status_code == 404


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_tokens_for_users_and_virtual_accounts(tmp_path: Path, mode: str) -> None:
    async with front(tmp_path) as gw:
        alice = await gw.token(PrincipalKind.USER, "Alice@Northwind.example")
        ci = await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
        stranger = await gw.token(PrincipalKind.USER, "mallory@elsewhere.example")
        assert "lab__secret-header__echo" in await names(gw, "/mcp", alice, mode)
        assert "lab__tools__echo" in await names(gw, "/mcp", ci, mode)
        assert not any("secret-header" in n for n in await names(gw, "/mcp", ci, mode))
        assert await names(gw, "/mcp", stranger, mode) == set()
        assert (await post(gw, "/mcp-server/lab/tools/server", stranger)).status_code == 403
        undeclared = await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ghost")
        refused = await post(gw, "/mcp", undeclared)
        assert refused.status_code == 401 and "virtual account 'ghost' is not declared" in refused.text


async def status_of_post(gw: SecureGateway, token: str) -> int:
    return (await post(gw, "/mcp", token)).status_code


async def test_revoked_and_expired_tokens_stop_on_the_next_request(tmp_path: Path) -> None:
    async with front(tmp_path) as gw:
        info, token = await gw.tokens.create(PrincipalKind.USER, "alice@northwind.example")
        mark(token)
        assert (await post(gw, "/mcp", token)).status_code == 200
        assert await gw.tokens.revoke(info.id)
        await refused_after_revocation(partial(status_of_post, gw, token))
        # A token minted an hour ago that lived for a minute (the store's clock is injectable; no waiting).
        past = TokenStore(gw.db, clock=lambda: time.time() - 3600)
        _, expired = await past.create(PrincipalKind.USER, "alice@northwind.example", expires_in=60)
        mark(expired)
        assert (await post(gw, "/mcp", expired)).status_code == 401


async def test_idp_jwts_with_team_claims(tmp_path: Path) -> None:
    async with front(tmp_path) as gw:
        now = time.time()
        # Not in any configured team; the IdP's group claim grants access.
        dana = idp_jwt("dana@northwind.example", GATEWAY_AUDIENCE, now, groups=["idp-only"])
        assert "lab__tools__echo" in await names(gw, "/mcp", dana)
        assert not any("secret-header" in n for n in await names(gw, "/mcp", dana))
        for bad in (
            idp_jwt("dana@northwind.example", "https://other.example", now, groups=["idp-only"]),
            idp_jwt("dana@northwind.example", GATEWAY_AUDIENCE, now - 7200, groups=["idp-only"]),
        ):
            refused = await post(gw, "/mcp", bad)
            assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]


async def test_admin_view_is_for_managers_only(tmp_path: Path) -> None:
    async with front(tmp_path) as gw, httpx.AsyncClient() as http:
        alice = await gw.token(PrincipalKind.USER, "alice@northwind.example")
        bob = await gw.token(PrincipalKind.USER, "bob@northwind.example")
        await names(gw, "/mcp", alice)  # warm the catalog so the view lists tools
        view = await http.get(f"{gw.url}/admin/groups/lab", headers={"authorization": f"Bearer {alice}"})
        assert view.status_code == 200
        body = view.json()
        servers = {s["name"]: s for s in body["servers"]}
        assert servers["secret-header"]["auth"] == {"type": "header"}
        assert servers["tools"]["authorized_subjects"] == ["team:idp-only", "team:platform", "virtualaccount:ci"]
        assert "echo" in servers["tools"]["tools"]
        assert "k-123" not in view.text and "tfy-secret" not in view.text
        for token, group in ((bob, "lab"), (alice, "nope")):
            refused = await http.get(f"{gw.url}/admin/groups/{group}", headers={"authorization": f"Bearer {token}"})
            assert refused.status_code == 403
        assert (await http.get(f"{gw.url}/admin/groups/lab")).status_code == 401


def test_local_mode_only_on_loopback(tmp_path: Path) -> None:
    config = tmp_path / "servers.d"
    config.mkdir()
    write_identities(config)
    from virtual_mcp.config.loader import load_config_dir

    registry = build_registry(load_config_dir(config))
    with pytest.raises(BadRequest, match="only allowed on a loopback listener"):
        create_app(registry, GatewaySettings(host="0.0.0.0", local_user="alice@northwind.example"))


@pytest.mark.parametrize(
    "origin", ["http://x.example/app", "null", "x.example", "http://u@x.example", "ftp://x.example", "http://x:99999"]
)
def test_an_allowed_origin_that_is_not_an_origin_is_refused_at_start(tmp_path: Path, origin: str) -> None:
    """Browsers send `scheme://host[:port]` and nothing more; a value that can never match is a mistake to report,
    not one to drop silently."""
    config = tmp_path / "servers.d"
    config.mkdir()
    write_identities(config)
    from virtual_mcp.config.loader import load_config_dir

    registry = build_registry(load_config_dir(config))
    with pytest.raises(BadRequest, match="is not an origin"):
        create_app(registry, GatewaySettings(allowed_origins=(origin,)))
    create_app(registry, GatewaySettings(allowed_origins=("https://app.x.example/", "http://[::1]:3000")))


async def test_dns_rebinding_is_refused_on_every_route(tmp_path: Path) -> None:
    async with front(tmp_path) as gw, httpx2.AsyncClient() as http:
        token = await gw.token(PrincipalKind.USER, "alice@northwind.example")
        port = gw.url.rsplit(":", 1)[1]
        rebound = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
        for path in (
            "/mcp",
            "/mcp-server/lab/tools/server",
            "/admin/groups/lab",
            "/.well-known/oauth-protected-resource",
        ):
            response = await http.post(f"{gw.url}{path}", json=INIT, headers={**ACCEPT, **rebound})
            assert response.status_code == 421, path
        assert (await http.get(f"{gw.url}/healthz", headers=rebound)).status_code == 200
        same_origin = {"origin": gw.url, "authorization": f"Bearer {token}", **ACCEPT}
        assert (await http.post(f"{gw.url}/mcp", json=INIT, headers=same_origin)).status_code == 200


async def test_unconfigured_servers_look_like_forbidden_ones(tmp_path: Path) -> None:
    async with front(tmp_path) as gw, httpx2.AsyncClient() as http:
        stranger = await gw.token(PrincipalKind.USER, "mallory@elsewhere.example")
        for path in ("/mcp-server/lab/tools/server", "/mcp-server/lab/nope/server"):
            assert (await post(gw, path)).status_code == 401
            forbidden = await post(gw, path, stranger)
            assert forbidden.status_code == 403
            assert (
                forbidden.json()["error"]["message"]
                == f"Forbidden: you are not authorized for {path.split('/')[2]}/{path.split('/')[3]}"
            )
            doc = await http.get(f"{gw.url}/.well-known/oauth-protected-resource{path}")
            assert doc.status_code == 200
        admin = await http.get(f"{gw.url}/admin/groups/lab")
        assert admin.status_code == 401 and admin.headers["www-authenticate"].startswith("Bearer resource_metadata=")


async def test_a_session_belongs_to_the_principal_that_opened_it(tmp_path: Path) -> None:
    async with front(tmp_path) as gw:
        alice = await gw.token(PrincipalKind.USER, "alice@northwind.example")
        bob = await gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "ci")
        opened = await post(gw, "/mcp", alice)
        session = opened.headers["mcp-session-id"]
        async with httpx2.AsyncClient() as http:
            hijack = await http.delete(
                f"{gw.url}/mcp", headers={"authorization": f"Bearer {bob}", "mcp-session-id": session, **ACCEPT}
            )
            assert hijack.status_code == 404
            mine = await http.delete(
                f"{gw.url}/mcp", headers={"authorization": f"Bearer {alice}", "mcp-session-id": session, **ACCEPT}
            )
            assert mine.status_code == 200

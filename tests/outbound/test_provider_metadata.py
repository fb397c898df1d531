"""Where an issuer's metadata is looked for (RFC 8414 section 3 and OIDC discovery, in MCP's order); the flow that
reads it runs against the real authorization server in tests/oauth/test_authorization_code.py."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support import bind, serve
from virtual_mcp.outbound.provider_metadata import ProviderMetadata, ProviderMetadataError, metadata_urls


def test_an_issuer_without_a_path() -> None:
    assert metadata_urls("https://idp.example/") == [
        "https://idp.example/.well-known/oauth-authorization-server",
        "https://idp.example/.well-known/openid-configuration",
    ]


def test_an_issuer_with_a_path_gets_the_path_inserted_then_appended() -> None:
    assert metadata_urls("https://idp.example:8443/tenant/one") == [
        "https://idp.example:8443/.well-known/oauth-authorization-server/tenant/one",
        "https://idp.example:8443/.well-known/openid-configuration/tenant/one",
        "https://idp.example:8443/tenant/one/.well-known/openid-configuration",
    ]


def documents(answers: dict[str, Response]) -> Starlette:
    async def answer(request: Request) -> Response:
        return answers.get(request.url.path, JSONResponse({"error": "not_found"}, status_code=404))

    return Starlette(routes=[Route("/{path:path}", answer)])


async def test_metadata_that_cannot_be_used_is_a_clear_refusal() -> None:
    """A real HTTP server publishing broken metadata: each problem is named, none is remembered as a confirmation."""
    answers: dict[str, Response] = {}
    async with serve(documents(answers)) as site, httpx.AsyncClient() as http:
        issuer = site.url
        metadata = ProviderMetadata(http, timeout=5)
        with pytest.raises(ProviderMetadataError) as missing:
            await metadata.require_s256(issuer)
        assert missing.value.message == (
            f"could not read the provider's metadata ({issuer}/.well-known/oauth-authorization-server: HTTP 404; "
            f"{issuer}/.well-known/openid-configuration: HTTP 404)"
        )
        answers["/.well-known/oauth-authorization-server"] = Response("<html>", media_type="text/html")
        answers["/.well-known/openid-configuration"] = JSONResponse(["a list"])
        with pytest.raises(ProviderMetadataError) as garbage:
            await metadata.require_s256(issuer)
        assert "oauth-authorization-server: not JSON; " in garbage.value.message
        assert "openid-configuration: not a JSON object)" in garbage.value.message

        answers["/.well-known/oauth-authorization-server"] = JSONResponse(
            {"issuer": "https://elsewhere.example", "code_challenge_methods_supported": ["S256"]}
        )
        with pytest.raises(ProviderMetadataError) as foreign:
            await metadata.require_s256(issuer)
        assert "names another issuer" in foreign.value.message

        answers["/.well-known/oauth-authorization-server"] = JSONResponse(
            {"issuer": issuer, "code_challenge_methods_supported": ["plain"]}
        )
        with pytest.raises(ProviderMetadataError) as plain:
            await metadata.require_s256(issuer)
        assert "lists code_challenge_methods_supported ['plain']" in plain.value.message

        answers["/.well-known/oauth-authorization-server"] = JSONResponse(
            {"issuer": f"{issuer}/", "code_challenge_methods_supported": ["plain", "S256"]}
        )
        await metadata.require_s256(issuer)
        # Confirmed: not read again within the hour, even if the document went away meanwhile.
        answers.clear()
        await metadata.require_s256(issuer)


async def test_an_unreachable_provider_is_named_by_its_error_kind() -> None:
    async with httpx.AsyncClient() as http:
        sock = bind()
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        with pytest.raises(ProviderMetadataError) as down:
            await ProviderMetadata(http, timeout=5).require_s256(f"http://127.0.0.1:{port}")
        assert "oauth-authorization-server: ConnectError" in down.value.message

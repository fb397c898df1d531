"""Two gateways (replicas) on one PostgreSQL database (a real server, tests/services.py), each with a data directory of
its own holding the same master key: a gateway token issued through one works on the other, its revocation is
refused by both at once, an identity revoked is refused by both within the revocation poll, the trail of both is
one, and what is sealed by one opens on the other."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.backends import build_lab
from tests.gateway.test_timing import ACCEPT, MODERN, group_doc
from tests.lab_config import ALICE, write_identities
from tests.security_support import GATEWAY_AUDIENCE, idp_jwt, secure_gateway
from tests.services import Postgres
from tests.support import serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.config.settings import Limits
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.keys import KEY_FILE_NAME
from virtual_mcp.vault.revocations import RevocationStore

ENDPOINT = "/mcp-server/lab/tools/server"
# The test asks as fast as it can until a revocation is seen: no request limit in its way.
UNLIMITED = Limits(requests_per_second_per_principal=100_000, request_burst_per_principal=100_000)


async def test_two_replicas_share_tokens_revocations_and_the_trail(tmp_path: Path, postgres: Postgres) -> None:
    url = await fresh_postgres(postgres)
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config)
        one, two = tmp_path / "one", tmp_path / "two"
        fast = {"database_url": url, "revocation_poll_seconds": 0.2, "limits": UNLIMITED}
        async with secure_gateway(config, one, **fast) as a:
            two.mkdir(mode=0o700)
            shutil.copy2(one / KEY_FILE_NAME, two / KEY_FILE_NAME)  # one master key for the fleet
            async with secure_gateway(config, two, **fast) as b:
                token = await a.token(PrincipalKind.USER, ALICE)
                for gw in (a, b):
                    async with gw.client(ENDPOINT, token) as client:
                        assert (await client.call_tool("echo", {"text": "hi"})).data == "hi"
                # The token revoked through one: refused by both at the next request.
                [info] = [t for t in await a.tokens.list() if t.name == ALICE]
                assert await a.tokens.revoke(info.id)
                for gw in (a, b):
                    with pytest.raises(Exception):  # noqa: B017 - refused at the door (401)
                        async with gw.client(ENDPOINT, token) as client:
                            await client.call_tool("echo", {"text": "again"})
                # An identity revoked (as `virtual-mcp revoke --user` records it, through either replica): both
                # refuse the IdP JWT it signed in with before, within their revocation poll.
                jwt = idp_jwt(ALICE, GATEWAY_AUDIENCE, time.time() - 5, groups=["platform"])
                async with httpx2.AsyncClient(timeout=10) as http:
                    assert {await _call(http, gw.url, jwt) for gw in (a, b)} == {200}
                    await RevocationStore(a.db).add(f"user:{ALICE}", time.time())
                    for gw in (a, b):
                        with anyio.fail_after(5):  # each replica's revocation poll (0.2 s here) finds it
                            while (status := await _call(http, gw.url, jwt)) == 200:
                                pass
                        assert status == 401
                # One trail: each replica's calls, whichever is asked.
                await b.audit(user=ALICE)  # (each replica's pending records written)
                seen_by_a = await a.audit(user=ALICE, limit=1000)
                assert seen_by_a == await b.audit(user=ALICE, limit=1000)
                allowed = [e for e in seen_by_a if e.method == "tools/call" and e.outcome == "allowed"]
                assert len(allowed) >= 3  # the calls on a, on b, and the fresh token's


async def _call(http: httpx2.AsyncClient, url: str, token: str) -> int:
    """The HTTP status of one 2026-07-28 tools/call with `token`."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "still?"}, "_meta": meta},
    }
    headers = {
        "accept": ACCEPT,
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    return (await http.post(f"{url}{ENDPOINT}", content=json.dumps(body), headers=headers)).status_code

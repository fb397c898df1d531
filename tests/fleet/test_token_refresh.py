"""One token refresh in the fleet: two replicas on one PostgreSQL database and one Redis (real servers), fifty
callers spread over both on an expired client-credentials token, a slow authorization server (a real one): exactly
one token request reaches it, and both replicas then present the same new token."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from tests.backends import Probe, build_lab, received
from tests.lab_config import CI
from tests.oauth.test_client_credentials import IDS, group_doc
from tests.oauth_server import CC_CLIENT_ID, authorization_server
from tests.security_support import OffsetClock, SecureGateway, secure_gateway
from tests.services import Postgres
from tests.services import Redis as RedisServer
from tests.support import serve
from tests.vault.test_store_engines import fresh_postgres
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.keys import KEY_FILE_NAME

ENDPOINT = "/mcp-server/g/analytics/server"


async def bearer(gw: SecureGateway, token: str, probe: Probe) -> str:
    async with gw.client(ENDPOINT, token) as client:
        return str((await received(client, probe))["authorization"]).removeprefix("Bearer ")


async def test_fifty_callers_over_two_replicas_cause_one_token_request(
    tmp_path: Path, postgres: Postgres, redis: RedisServer
) -> None:
    probe = Probe()
    url = await fresh_postgres(postgres)
    async with (
        authorization_server(access_token_ttl=100) as auth,
        serve(build_lab(probe).http_app(path="/mcp")) as backend,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "g.yaml").write_text(group_doc(backend.url, auth.token_endpoint, CC_CLIENT_ID))
        (config / "ids.yaml").write_text(IDS)
        secrets = {"tfy-secret://t:analytics:client_secret": auth.secret(CC_CLIENT_ID)}
        clock = OffsetClock()
        shared = {"database_url": url, "redis_url": redis.url}
        one, two = tmp_path / "one", tmp_path / "two"
        async with secure_gateway(config, one, secrets, clock=clock, **shared) as a:
            two.mkdir(mode=0o700)
            shutil.copy2(one / KEY_FILE_NAME, two / KEY_FILE_NAME)  # one master key for the fleet
            async with secure_gateway(config, two, secrets, clock=clock, **shared) as b:
                ci = await a.token(PrincipalKind.VIRTUAL_ACCOUNT, CI)
                first = await bearer(a, ci, probe)
                assert await bearer(b, ci, probe) == first  # b found a's token in the shared store
                await auth.reset()
                clock.offset = 500  # long expired: every caller needs a new one before its call
                await auth.behave(token_delay_ms=300)
                seen: list[str] = []

                async def call(gw: SecureGateway) -> None:
                    seen.append(await bearer(gw, ci, probe))

                async with anyio.create_task_group() as tg:
                    for i in range(50):
                        tg.start_soon(call, (a, b)[i % 2])
                assert await auth.token_requests("client_credentials") == 1
                assert len(set(seen)) == 1 and seen[0] != first

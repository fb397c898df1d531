"""A gateway with the production security planes wired to real stores in a temporary data directory."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.processes import read_elsewhere
from tests.sensitive import SENSITIVE, mark
from tests.support import Served, serve
from virtual_mcp.audit import AuditEvent, AuditLog
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.fleet.connection import redis_url
from virtual_mcp.gateway.assemble import assembled
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.metrics import Metrics
from virtual_mcp.registry import Registry, build_registry
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore
from virtual_mcp.vault.engines import database_url, open_database
from virtual_mcp.vault.sql import SqlDatabase

ISSUER = "https://idp.northwind.example"
GATEWAY_AUDIENCE = "https://mcp.northwind.example"
HMAC_KEY = "an hmac key that is long enough for HS256 tests"  # not a secret: a test fixture
mark(HMAC_KEY)
GATEWAY_DOC = f"""\
type: gateway
inbound:
  jwt:
    issuer: {ISSUER}
    audience: {GATEWAY_AUDIENCE}
    hs256_secret: tfy-secret://gw:jwt:hmac
    teams_claim: groups
"""


class OffsetClock:
    """Wall-clock time moved forward by hand: the gateway's token lifetimes pass without anyone waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class SecureGateway:
    """The served gateway and the parts of it the tests look into (the very objects `assemble` built)."""

    served: Served
    registry: Registry
    tokens: TokenStore
    secrets: SecretStore
    db: SqlDatabase
    audit_log: AuditLog
    data_dir: Path
    runtime: Runtime
    metrics: Metrics

    def leaks(self) -> list[str]:
        """Every registered token, secret or forwarded value found in the database files or the audit file."""
        stored = "".join(
            read_elsewhere(p).decode("latin-1")
            for p in sorted(self.data_dir.rglob("*"))
            if p.is_file() and p.relative_to(self.data_dir).parts[0].startswith(("gateway.db", "audit"))
        )
        return [value for value in SENSITIVE if value in stored]

    async def audit(self, **filters: Any) -> list[AuditEvent]:
        """The audit events recorded so far (newest first), once everything recorded is written."""
        await self.audit_log.flush()
        return await AuditStore(self.db).query(AuditQuery(**filters))

    @property
    def url(self) -> str:
        return self.served.url

    async def token(self, kind: PrincipalKind, name: str) -> str:
        _, token = await self.tokens.create(kind, name)
        mark(token)
        return token

    def client(self, path: str, bearer: str | None, headers: dict[str, str] | None = None, mode: str = "legacy") -> Any:
        transport = StreamableHttpTransport(f"{self.url}{path}", headers=headers or {}, auth=bearer)
        return Client(transport, mode=mode)


def idp_jwt(subject: str, audience: list[str] | str, now: float, **claims: Any) -> str:
    payload = {"iss": ISSUER, "aud": audience, "sub": subject, "iat": now, "exp": now + 600, **claims}
    token = jwt.encode(payload, HMAC_KEY, algorithm="HS256")
    mark(token, token.rsplit(".", 1)[-1])
    return token


async def store_secrets(data_dir: Path, secrets: dict[str, str], database_url: str | None = None) -> None:
    """Put `secrets` (URI -> value) in the vault (the data directory's, or the database at `database_url`) sealed
    with the data directory's master key, as `virtual-mcp secrets set` does."""
    async with open_database(data_dir, database_url) as db:
        store = SecretStore(db, LocalKeyProvider.load(data_dir))
        for uri, value in secrets.items():
            mark(value)
            await store.set(SecretRef.parse(uri), value)


@asynccontextmanager
async def secure_gateway(
    config_dir: Path,
    data_dir: Path,
    secrets: dict[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    sock: socket.socket | None = None,
    **settings: Any,
) -> AsyncIterator[SecureGateway]:
    """The production gateway (`virtual_mcp.gateway.assemble`, as `serve` builds it) on `config_dir`, with its
    vault in `data_dir`, HS256 JWTs from ISSUER accepted, and `secrets` stored as `virtual-mcp secrets set` would."""
    (config_dir / "gateway.yaml").write_text(GATEWAY_DOC)
    registry = build_registry(load_config_dir(config_dir))
    # The engines `serve` would use with this environment (tests/store_mode.py), unless the test names its own.
    options: dict[str, Any] = {
        "list_deadline_seconds": 2.0,
        "data_dir": data_dir,
        "database_url": database_url(None),
        "redis_url": redis_url(None),
        **settings,
    }
    await store_secrets(data_dir, {"tfy-secret://gw:jwt:hmac": HMAC_KEY, **(secrets or {})}, options["database_url"])
    async with (
        assembled(registry, GatewaySettings(**options), clock=clock) as gateway,
        serve(gateway.app, sock) as served,
    ):
        parts = (gateway.tokens, gateway.secrets, gateway.db, gateway.audit)
        yield SecureGateway(served, registry, *parts, data_dir, gateway.runtime, gateway.metrics)

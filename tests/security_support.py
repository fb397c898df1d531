"""A gateway with the production security planes wired to real stores in a temporary data directory."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.processes import read_elsewhere
from tests.sensitive import SENSITIVE, mark
from tests.support import Served, serve
from virtual_mcp.audit import AuditEvent, AuditLog, JsonLinesSink
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.gateway.app import Security, create_app
from virtual_mcp.gateway.assemble import resolve_secrets
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.jwt import JwtVerifier
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.rate_limit import RequestLimiter
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.credentials import OutboundCredentials, secret_refs
from virtual_mcp.outbound.token_cache import VaultTokenCache
from virtual_mcp.outbound.token_manager import InProcessLocks, TokenManager
from virtual_mcp.registry import Registry, build_registry
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import Database, LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore
from virtual_mcp.vault.check import health as vault_health
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore
from virtual_mcp.vault.revocations import RevocationStore

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
    served: Served
    registry: Registry
    tokens: TokenStore
    secrets: SecretStore
    db: Database
    audit_log: AuditLog
    data_dir: Path
    runtime: Runtime
    metrics: Metrics

    def leaks(self) -> list[str]:
        """Every registered token, secret or forwarded value found in the database files or the audit file."""
        stored = "".join(
            read_elsewhere(p).decode("latin-1")
            for p in sorted(self.data_dir.iterdir())
            if p.name.startswith(("gateway.db", "audit"))
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


@asynccontextmanager
async def secure_gateway(
    config_dir: Path,
    data_dir: Path,
    secrets: dict[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    sock: socket.socket | None = None,
    **settings: Any,
) -> AsyncIterator[SecureGateway]:
    """The gateway with a real token store, secret store (envelope-encrypted) and HS256 JWT verification."""
    (config_dir / "gateway.yaml").write_text(GATEWAY_DOC)
    registry = build_registry(load_config_dir(config_dir))
    keys = LocalKeyProvider.load(data_dir)
    async with Database.open(data_dir) as db, Database.open(data_dir) as audit_db, httpx.AsyncClient() as http:
        store = SecretStore(db, keys)
        await store.set(SecretRef.parse("tfy-secret://gw:jwt:hmac"), HMAC_KEY)
        for uri, value in (secrets or {}).items():
            mark(value)
            await store.set(SecretRef.parse(uri), value)
        values = await resolve_secrets(store, [(ref, ref.uri) for ref, _ in secret_refs(registry)])
        assert registry.inbound.jwt is not None
        verifier = JwtVerifier(registry.inbound.jwt, http=http, hmac_secret=HMAC_KEY.encode())
        tokens = TokenStore(db)
        revocations = RevocationList(RevocationStore(db))
        # Upstream OAuth tokens: the vault-backed cache and the token manager, with a clock the test may move.
        metrics = Metrics()
        token_manager = TokenManager(
            VaultTokenCache(OAuthTokenStore(db, keys)), InProcessLocks(), clock=clock, metrics=metrics
        )
        options: dict[str, Any] = {"list_deadline_seconds": 2.0, **settings}
        gateway_settings = GatewaySettings(**options)
        timeout = gateway_settings.token_timeout_seconds
        limits = gateway_settings.limits
        limiter = RequestLimiter(limits.requests_per_second_per_principal, limits.request_burst_per_principal)
        audit_log = AuditLog([AuditStore(audit_db), JsonLinesSink(data_dir / "audit.jsonl")])
        security = Security(
            Authenticator(registry, tokens=tokens, jwt=verifier, revocations=revocations, limiter=limiter),
            OutboundCredentials(registry, values.__getitem__, token_manager, http, token_timeout=timeout),
            ResourceMetadata(authorization_servers=(ISSUER,)),
            audit_log,
            revocations,
            health=partial(vault_health, db, data_dir),
        )
        app = create_app(registry, gateway_settings, security, metrics)
        async with serve(app, sock) as served:
            yield SecureGateway(served, registry, tokens, store, db, audit_log, data_dir, app.state.runtime, metrics)

"""Putting a production gateway together: database, vault, secrets, tokens, JWT verification, the ASGI app."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette

from virtual_mcp.audit import AuditEvent, AuditLog, JsonLinesSink
from virtual_mcp.audit_journal import DIRECTORY as JOURNALS
from virtual_mcp.audit_journal import AuditJournal, recover
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import ConfigError, ConfigIssue
from virtual_mcp.fleet.calls import ReplicaCalls
from virtual_mcp.fleet.connection import fleet_redis
from virtual_mcp.fleet.events import FleetEvents
from virtual_mcp.fleet.locks import RedisLocks
from virtual_mcp.fleet.once import FleetOnce
from virtual_mcp.fleet.pending import RedisPending
from virtual_mcp.fleet.rate import FleetRequestLimiter
from virtual_mcp.fleet.sealing import Sealer
from virtual_mcp.fleet.sessions import SessionFleet
from virtual_mcp.fleet.status import FleetStatus, redis_health
from virtual_mcp.fleet.tasks import TaskFleet
from virtual_mcp.fleet.upstream import UpstreamFleet
from virtual_mcp.gateway.app import Security, create_app
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.gateway.service.request_state import RequestStates
from virtual_mcp.inbound.authenticator import Authenticator
from virtual_mcp.inbound.jwt import JwtVerifier
from virtual_mcp.inbound.local import LocalIdentity
from virtual_mcp.inbound.metadata import ResourceMetadata
from virtual_mcp.inbound.rate_limit import Admission, RequestLimiter
from virtual_mcp.inbound.revocations import RevocationList
from virtual_mcp.inbound.verified import RecentlyVerified
from virtual_mcp.metrics import Metrics
from virtual_mcp.outbound.consent import FLOWS_PER_USER, MAX_PENDING, TICKETS_PER_USER, ConsentFlows
from virtual_mcp.outbound.credentials import OutboundCredentials, secret_refs
from virtual_mcp.outbound.pending import LocalPending
from virtual_mcp.outbound.token_cache import VaultTokenCache
from virtual_mcp.outbound.token_manager import InProcessLocks, KeyedLocks, TokenManager
from virtual_mcp.registry import Registry
from virtual_mcp.tls import client_context
from virtual_mcp.upstream.cookies import no_cookie_jar
from virtual_mcp.vault import LocalKeyProvider, SecretNotFound, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditStore
from virtual_mcp.vault.check import check_master_key, sealed_records
from virtual_mcp.vault.check import health as vault_health
from virtual_mcp.vault.engines import is_remote, open_database
from virtual_mcp.vault.lock import serving
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore
from virtual_mcp.vault.revocations import RevocationStore
from virtual_mcp.vault.sql import SqlDatabase

logger = logging.getLogger(__name__)


async def resolve_secrets(store: SecretStore, refs: list[tuple[SecretRef, str]]) -> dict[SecretRef, str]:
    """Every referenced secret, or one ConfigError naming each reference that the store does not hold."""
    values: dict[SecretRef, str] = {}
    issues: list[ConfigIssue] = []
    for ref, where in refs:
        if ref in values:
            continue
        try:
            values[ref] = await store.get(ref)
        except SecretNotFound:
            issues.append(
                ConfigIssue(
                    "",
                    where,
                    "",
                    f"unresolvable secret reference {ref.uri} "
                    f"(store it with: virtual-mcp secrets set {ref.tenant}:{ref.group}:{ref.key})",
                )
            )
    if issues:
        raise ConfigError(issues)
    return values


@dataclass(frozen=True)
class Assembled:
    """A production gateway put together: its app, and the stores and parts behind it that an operator's tools and
    the tests look into (the same objects the app uses, not copies)."""

    app: Starlette
    db: SqlDatabase
    secrets: SecretStore
    tokens: TokenStore
    audit: AuditLog
    metrics: Metrics

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime


@asynccontextmanager
async def production_app(registry: Registry, settings: GatewaySettings) -> AsyncIterator[Starlette]:
    """The gateway with its stores open for as long as the block runs."""
    async with assembled(registry, settings) as gateway:
        yield gateway.app


@asynccontextmanager
async def assembled(
    registry: Registry, settings: GatewaySettings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Assembled]:
    """The gateway and its parts, stores open and the data directory held for as long as the block runs.

    `clock` is the wall clock upstream token lifetimes are measured by (a test moves it instead of waiting).
    """
    with serving(settings.data_dir):
        # The audit writer has a connection of its own: its batches never hold up a request's token check.
        async with (
            open_database(settings.data_dir, settings.database_url) as db,
            open_database(settings.data_dir, settings.database_url) as audit_db,
            # Token endpoints, JWKS, provider metadata: one user's provider cookies never reach another's request.
            httpx.AsyncClient(timeout=10, cookies=no_cookie_jar(), verify=client_context()) as http,
            fleet_redis(settings.redis_url) as redis,
        ):
            yield await _assemble(registry, settings, db, audit_db, http, clock, redis)


def fleet_consent(redis: Redis, status: FleetStatus, keys: LocalKeyProvider) -> ConsentFlows:
    """Consent links and flows any replica serves a step of: in Redis, sealed, keyed by the fleet's key."""
    sealer = Sealer(keys.derived("consent-records"), "consent")
    clock = time.monotonic

    def table(name: str, per_user: int) -> RedisPending:
        return RedisPending(redis, status, sealer, name, per_user, LocalPending(per_user, MAX_PENDING, clock))

    return ConsentFlows(
        clock,
        tickets=table("tickets", TICKETS_PER_USER),
        flows=table("flows", FLOWS_PER_USER),
        keys=keys.derived("consent-macs"),
    )


async def _assemble(
    registry: Registry,
    settings: GatewaySettings,
    db: SqlDatabase,
    audit_db: SqlDatabase,
    http: httpx.AsyncClient,
    clock: Callable[[], float],
    redis: Redis | None = None,
) -> Assembled:
    # A new master key only for an empty vault: with sealed records, a missing key is an error to fix.
    keys = LocalKeyProvider.load(settings.data_dir, create=await sealed_records(db) == 0)
    await check_master_key(db, keys)
    store = SecretStore(db, keys)
    needed = [(ref, f"server {server.key!r}") for ref, server in secret_refs(registry)]
    jwt_settings = registry.inbound.jwt
    if jwt_settings is not None and jwt_settings.hs256_secret is not None:
        needed.append((SecretRef.parse(jwt_settings.hs256_secret), "gateway: inbound.jwt.hs256_secret"))
    if registry.metrics.bearer_token is not None:
        needed.append((SecretRef.parse(registry.metrics.bearer_token), "gateway: metrics.bearer_token"))
    values = await resolve_secrets(store, needed)
    verifier = None
    if jwt_settings is not None:
        hmac_secret = None
        if jwt_settings.hs256_secret is not None:
            hmac_secret = values[SecretRef.parse(jwt_settings.hs256_secret)].encode()
        verifier = JwtVerifier(jwt_settings, http=http, hmac_secret=hmac_secret)
    local = LocalIdentity(registry, settings.local_user) if settings.local_user else None
    revocations = RevocationList(RevocationStore(db))
    limits = settings.limits
    metrics = Metrics()
    rate, burst = limits.requests_per_second_per_principal, limits.request_burst_per_principal
    status = FleetStatus(metrics) if redis is not None else None
    # Counted over the fleet (Redis), or by this process (no Redis).
    limiter: Admission = (
        FleetRequestLimiter(redis, status, rate, burst)
        if redis is not None and status is not None
        else RequestLimiter(rate, burst)
    )
    gateway_tokens = TokenStore(db)
    # A database a round trip away: a token verified a moment ago is answered from memory until anything is revoked
    # (at most the revocation poll interval later).
    verified = (
        RecentlyVerified(gateway_tokens, settings.revocation_poll_seconds) if is_remote(settings.database_url) else None
    )
    authenticator = Authenticator(
        registry, tokens=verified or gateway_tokens, jwt=verifier, local=local, revocations=revocations, limiter=limiter
    )
    public_url = str(registry.inbound.public_url) if registry.inbound.public_url else None
    metadata = ResourceMetadata(
        authorization_servers=(jwt_settings.issuer,) if jwt_settings else (), public_url=public_url
    )
    # One refresh per key in the fleet (Redis), or in this process (no Redis).
    locks: KeyedLocks = InProcessLocks()
    events = None
    sessions = None
    replicas = None
    upstream = None
    tasks = None
    once = None
    consent = None
    health_checks = [partial(vault_health, db, settings.data_dir, audit_db)]
    if redis is not None and status is not None:
        locks = RedisLocks(redis, status, lease_seconds=settings.refresh_lock_lease_seconds)
        events = FleetEvents(redis, status)
        sessions = SessionFleet(redis, status, Sealer(keys.derived("fleet-messages"), "sessions"))
        replicas = ReplicaCalls(redis, status, Sealer(keys.derived("fleet-messages"), "calls"))
        upstream = UpstreamFleet(redis, status, Sealer(keys.derived("fleet-messages"), "upstream"))
        tasks = TaskFleet(redis, status, Sealer(keys.derived("fleet-messages"), "tasks"))
        once = FleetOnce(redis, status)
        consent = fleet_consent(redis, status, keys)
        health_checks.append(partial(redis_health, redis, status))
    upstream_tokens = TokenManager(VaultTokenCache(OAuthTokenStore(db, keys)), locks, clock=clock, metrics=metrics)
    credentials = OutboundCredentials(
        registry,
        values.__getitem__,
        upstream_tokens,
        http,
        token_timeout=settings.token_timeout_seconds,
        consent=consent,
    )
    # Each record also in this process's journal until written: a process killed outright loses none of them, and
    # the journals of such processes are written here, before this one serves.
    journals = settings.data_dir / JOURNALS
    trail, jsonl = AuditStore(audit_db), JsonLinesSink(settings.audit_jsonl_path)
    audit = AuditLog([trail, jsonl], journal=AuditJournal(journals))

    async def recovered(events: list[AuditEvent]) -> None:  # (the trail's failure keeps the journal)
        await trail.write(events)
        await jsonl.write(events)

    await recover(journals, trail, recovered)

    async def health() -> dict[str, str | None]:
        return {name: problem for check in health_checks for name, problem in (await check()).items()}

    metrics_token = values[SecretRef.parse(registry.metrics.bearer_token)] if registry.metrics.bearer_token else None
    security = Security(
        authenticator,
        credentials,
        metadata,
        audit,
        revocations,
        health=health,
        metrics_token=metrics_token,
        events=events,
        sessions=sessions,
        request_states=RequestStates(keys=keys.derived("request-state"), once=once),
        replicas=replicas,
        upstream=upstream,
        tasks=tasks,
    )
    app = create_app(registry, settings, security, metrics)
    if verified is not None:
        app.state.runtime.on_revoked.append(verified.forget)
    return Assembled(app, db, store, gateway_tokens, audit, metrics)

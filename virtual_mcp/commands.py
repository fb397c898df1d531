"""What the CLI's management commands do: tokens and secrets in the gateway's data directory."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx

from virtual_mcp.audit import AuditEvent, JsonLinesSink, bound, operator_event, revocation_event
from virtual_mcp.audit_report import parse_time, render, visible
from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.errors import BadRequest
from virtual_mcp.identity import identity
from virtual_mcp.registry import Registry
from virtual_mcp.tls import client_context
from virtual_mcp.types import PrincipalKind
from virtual_mcp.upstream.cookies import no_cookie_jar
from virtual_mcp.vault import LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.audit_store import AuditQuery, AuditStore
from virtual_mcp.vault.check import check_master_key
from virtual_mcp.vault.copy import copy_database
from virtual_mcp.vault.db import DB_FILE_NAME
from virtual_mcp.vault.engines import check_database_url, database_url, open_database, sqlite_dir
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore
from virtual_mcp.vault.revocations import RevocationStore
from virtual_mcp.vault.sql import SqlDatabase

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


MAX_DURATION_DAYS = 3650
MAX_DESCRIPTION = 200
MAX_AUDIT_LIMIT = 1_000_000
_SERVER = re.compile(r"^[^/\s]+/[^/\s]+$")


def parse_duration(text: str) -> float:
    """`90`, `45m`, `12h`, `30d` -> seconds (at most ten years)."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise BadRequest(f"invalid duration {text!r}: use a positive number with s, m, h or d (e.g. 30d)")
    seconds = float(int(match.group(1)) * _UNIT[match.group(2)])
    if seconds > MAX_DURATION_DAYS * 86400:
        raise BadRequest(f"invalid duration {text[:40]!r}: at most {MAX_DURATION_DAYS}d")
    return seconds


def description(text: str | None) -> str | None:
    """A token's description: shown by `token list`, so short and free of control characters."""
    if text is None:
        return None
    if len(text) > MAX_DESCRIPTION:
        raise BadRequest(f"--description is {len(text)} characters long; at most {MAX_DESCRIPTION}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise BadRequest("--description may not contain control characters (newlines, escape sequences, ...)")
    return text


def server_key(text: str) -> str:
    """A GROUP/SERVER argument."""
    if not _SERVER.match(text):
        raise BadRequest(f"expected GROUP/SERVER, got {text[:80]!r}")
    return text


def when(text: str, now: float) -> float:
    """A `--since`/`--until` value: a duration ago with its unit (`90s`, `15m`, `7d`) or an ISO 8601 time (so
    `2026` is the year, not 2026 seconds)."""
    match = _DURATION.match(text.strip())
    return parse_time(text, now, parse_duration(text) if match and match.group(2) else None)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


async def token_create(
    data_dir: Path,
    kind: PrincipalKind,
    name: str,
    expires_in: str | None,
    text: str | None,
    out: TextIO,
    *,
    database_url: str | None = None,
) -> None:
    description_text = description(text)
    if expires_in:
        parse_duration(expires_in)  # refused before anything is written
    async with open_database(data_dir, database_url) as db:
        info, token = await TokenStore(db).create(
            kind,
            name,
            expires_in=parse_duration(expires_in) if expires_in else None,
            description=description_text,
        )
    print(f"token id: {info.id}", file=sys.stderr)
    print(f"subject:  {info.subject}", file=sys.stderr)
    print(f"expires:  {_when(info.expires_at) if info.expires_at else 'never'}", file=sys.stderr)
    print("This is the only time the token is shown; the gateway keeps only its hash:", file=sys.stderr)
    print(token, file=out)


async def token_list(data_dir: Path, include_revoked: bool, out: TextIO, *, database_url: str | None = None) -> None:
    require_database(data_dir, database_url)
    async with open_database(data_dir, database_url) as db:
        tokens = await TokenStore(db).list(include_revoked=include_revoked)
    now = time.time()
    print(f"{'ID':14} {'SUBJECT':44} {'CREATED':16} {'EXPIRES':16} {'LAST USED':16} STATE", file=out)
    for t in tokens:
        state = "revoked" if t.revoked_at else ("expired" if t.expired(now) else "active")
        print(
            f"{t.id:14} {visible(t.subject):44} {_when(t.created_at):16} {_when(t.expires_at):16} "
            f"{_when(t.last_used_at):16} {state}",
            file=out,
        )


async def token_revoke(data_dir: Path, token_id: str, *, database_url: str | None = None) -> bool:
    require_database(data_dir, database_url)
    async with open_database(data_dir, database_url) as db:
        store = TokenStore(db)
        info = await store.get(token_id)
        revoked = await store.revoke(token_id)
        if revoked and info is not None:
            await _audit_revocation(db, data_dir, {"token": token_id, "subject": info.subject}, info.subject)
    return revoked


async def revoke_user(
    data_dir: Path, config_dir: Path | None, user: str, *, database_url: str | None = None
) -> dict[str, Any]:
    """Cut a user off everywhere: every gateway token revoked, every stored upstream token deleted (revoked at the
    provider first where the server's configuration has a `revocation_url`), running gateways told (they drop what
    they hold in memory within a poll and refuse the user's IdP JWTs issued before now). Audited, with whatever part
    was done if a step fails.

    Everything that can be wrong with the input (the identity, the data directory, the configuration, the master
    key, a secret) is found before anything is changed. `detail["known"]` says whether the user was ever seen or
    configured (`_known`): when not, the name is probably misspelt, and the CLI says so. The revocation
    is recorded either way, so an IdP JWT issued before it is refused even for a user the gateway never saw."""
    user = identity(user, "user")
    require_database(data_dir, database_url)
    registry = None
    if config_dir is not None:
        from virtual_mcp.config.loader import load_config_dir
        from virtual_mcp.registry import build_registry

        registry = build_registry(load_config_dir(config_dir))
    keys = LocalKeyProvider.load(data_dir, create=False)
    async with open_database(data_dir, database_url) as db:
        store = OAuthTokenStore(db, keys)
        credentials = await _provider_credentials(db, keys, registry, store) if registry is not None else None
        detail: dict[str, Any] = {"user": user}
        known = await _known(db, store, registry, user)
        try:
            revoked_at = time.time()
            detail["gateway_tokens_revoked"] = await TokenStore(db).revoke_subject(PrincipalKind.USER, user)
            detail["upstream"] = await _forget_upstream(store, credentials, user)
            # Last: running gateways then drop what they hold in memory, once the stored tokens are gone.
            await RevocationStore(db).add(f"user:{user}", revoked_at)
        except BaseException as exc:
            detail["failed"] = type(exc).__name__
            raise
        finally:
            detail["known"] = known
            with anyio.CancelScope(shield=True):
                await _audit_revocation(db, data_dir, detail, f"user:{user}")
    return detail


async def _known(db: SqlDatabase, store: OAuthTokenStore, registry: Registry | None, user: str) -> bool:
    """Whether `user` was ever seen or configured: a token (any state), a connected account, a record of their own,
    a team membership or a subject in the configuration. (Not an earlier revocation: a misspelt name revoked twice
    is still misspelt.)"""
    who = f"user:{user}"
    if (
        await TokenStore(db).count_subject(PrincipalKind.USER, user)
        or await store.accounts(who)
        or await AuditStore(db).acted(who)
    ):
        return True
    return registry is not None and (
        bool(registry.teams_of(user)) or any(who in gate for gate in registry.gates.values())
    )


async def _provider_credentials(
    db: SqlDatabase, keys: LocalKeyProvider, registry: Registry, store: OAuthTokenStore
) -> Callable[[str], Awaitable[dict[str, str]]]:
    """How to revoke a user's tokens at their providers, with every secret the configuration needs resolved now."""
    from virtual_mcp.gateway.assemble import resolve_secrets
    from virtual_mcp.outbound.credentials import OutboundCredentials, secret_refs
    from virtual_mcp.outbound.token_cache import VaultTokenCache
    from virtual_mcp.outbound.token_manager import InProcessLocks, TokenManager

    needed = [(ref, f"server {srv.key!r}") for ref, srv in secret_refs(registry)]
    values = await resolve_secrets(SecretStore(db, keys), needed)
    tokens = TokenManager(VaultTokenCache(store), InProcessLocks())

    async def disconnect_all(user: str) -> dict[str, str]:
        async with httpx.AsyncClient(timeout=10, cookies=no_cookie_jar(), verify=client_context()) as http:
            return await OutboundCredentials(registry, values.__getitem__, tokens, http).disconnect_all(user)

    return disconnect_all


async def _forget_upstream(
    store: OAuthTokenStore, disconnect_all: Callable[[str], Awaitable[dict[str, str]]] | None, user: str
) -> dict[str, str]:
    held = await store.accounts(f"user:{user}")
    outcomes = await disconnect_all(user) if held and disconnect_all is not None else {}
    for server in held:
        if server not in outcomes:
            await store.delete(server, f"user:{user}")
            outcomes[server] = "deleted (no configuration given or the server is no longer configured)"
    return outcomes


def require_database(data_dir: Path, url: str | None = None) -> None:
    """Management commands that read what a gateway wrote refuse a directory without its database (a database
    named by URL is checked by opening it)."""
    check_database_url(url)
    if url is None and not (data_dir / DB_FILE_NAME).is_file():
        raise BadRequest(f"no gateway database in {data_dir} (is --data-dir the directory serve uses?)")


async def _audit_revocation(db: SqlDatabase, data_dir: Path, detail: dict[str, Any], target: str) -> None:
    await _record(db, data_dir, revocation_event(getpass.getuser(), detail, time.time(), target))


async def _audit_operator(db: SqlDatabase, data_dir: Path, method: str, detail: dict[str, Any]) -> None:
    await _record(db, data_dir, operator_event(getpass.getuser(), method, detail, time.time()))


async def _record(db: SqlDatabase, data_dir: Path, event: AuditEvent) -> None:
    event = bound(event)
    await AuditStore(db).write([event])
    await JsonLinesSink(data_dir / "audit.jsonl").write([event])


async def secret_set(data_dir: Path, reference: str, value: str, *, database_url: str | None = None) -> SecretRef:
    ref = _ref(reference)
    if value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise BadRequest("refusing to store an empty secret (the value is read from standard input)")
    keys = LocalKeyProvider.load(data_dir)
    async with open_database(data_dir, database_url) as db:
        await SecretStore(db, keys).set(ref, value)
    return ref


async def secret_list(data_dir: Path, out: TextIO, *, database_url: str | None = None) -> None:
    require_database(data_dir, database_url)
    keys = LocalKeyProvider.load(data_dir, create=False)
    async with open_database(data_dir, database_url) as db:
        for ref in await SecretStore(db, keys).list_refs():
            print(ref.uri, file=out)


async def secret_delete(data_dir: Path, reference: str, *, database_url: str | None = None) -> bool:
    ref = _ref(reference)
    require_database(data_dir, database_url)
    keys = LocalKeyProvider.load(data_dir, create=False)
    async with open_database(data_dir, database_url) as db:
        return await SecretStore(db, keys).delete(ref)


def _ref(reference: str) -> SecretRef:
    text = reference if reference.startswith("tfy-secret://") else f"tfy-secret://{reference}"
    try:
        return SecretRef.parse(text)
    except ValueError:
        raise BadRequest(f"expected TENANT:GROUP:KEY (or tfy-secret://TENANT:GROUP:KEY), got {reference!r}") from None


async def keys_rotate(data_dir: Path, *, database_url: str | None = None) -> tuple[str, int, int]:
    """A new current master key; every stored data key is re-wrapped under it (payloads untouched). A running
    gateway keeps working throughout: it re-reads the key file when it meets the new key id."""
    require_database(data_dir, database_url)
    keys = LocalKeyProvider.load(data_dir, create=False)
    async with open_database(data_dir, database_url) as db:
        await check_master_key(db, keys)
        kid = keys.add_key()
        secrets = await SecretStore(db, keys).rewrap_all()
        tokens = await OAuthTokenStore(db, keys).rewrap_all()
    return kid, secrets, tokens


async def connections_list(data_dir: Path, user: str, out: TextIO, *, database_url: str | None = None) -> None:
    """The servers a user has connected (per-user OAuth tokens held in the vault); never the tokens."""
    user = identity(user, "user")
    require_database(data_dir, database_url)
    async with open_database(data_dir, database_url) as db:
        for server in await OAuthTokenStore(db, LocalKeyProvider.load(data_dir, create=False)).accounts(f"user:{user}"):
            print(server, file=out)


async def connections_disconnect(data_dir: Path, user: str, server: str, *, database_url: str | None = None) -> bool:
    user = identity(user, "user")
    server_key(server)
    require_database(data_dir, database_url)
    async with open_database(data_dir, database_url) as db:
        store = OAuthTokenStore(db, LocalKeyProvider.load(data_dir, create=False))
        return await store.delete(server, f"user:{user}")


async def db_upgrade(data_dir: Path, *, database_url: str | None = None) -> tuple[str, int]:
    """`virtual-mcp db upgrade`: bring the database to this gateway's schema; (its name, the version it is at)."""
    async with open_database(data_dir, database_url, upgrade=True) as db:
        return str(db.path), await db.schema_version()


async def db_copy(data_dir: Path, source: str, target: str) -> dict[str, int]:
    """`virtual-mcp db copy --from URL --to URL`: every row of `source` into the empty `target` (vault/copy.py);
    the rows copied, per table. A source that is an embedded database must exist already."""
    for url in (source, target):
        check_database_url(url)
    if source.startswith("sqlite:") and not (sqlite_dir(source) / DB_FILE_NAME).is_file():
        raise BadRequest(f"no gateway database in {sqlite_dir(source)} (--from sqlite:DIR names a data directory)")
    async with open_database(data_dir, source) as src, open_database(data_dir, target, upgrade=True) as dst:
        copied = await copy_database(src, dst)
        detail = {"from": str(src.path), "to": str(dst.path), "rows": copied}
        await _audit_operator(dst, data_dir, "db copy", detail)
    return copied


async def audit_prune(data_dir: Path, before: str, *, database_url: str | None = None) -> int:
    """`virtual-mcp audit prune --before WHEN`: delete older events; the prune itself is recorded."""
    now = time.time()
    cut = when(before, now)
    if cut > now:
        raise BadRequest(f"--before {before[:40]!r} is in the future: that would delete events still being written")
    require_database(data_dir, database_url)
    async with open_database(data_dir, database_url) as db:
        deleted = await AuditStore(db).prune(cut)
        await _audit_operator(db, data_dir, "audit prune", {"before": cut, "deleted": deleted})
    return deleted


async def audit_query(args: argparse.Namespace, out: TextIO) -> None:
    """`virtual-mcp audit`: the newest matching records, read-only (a running gateway keeps writing meanwhile)."""
    if not 0 < args.limit <= MAX_AUDIT_LIMIT:
        raise BadRequest(f"--limit must be a positive number, at most {MAX_AUDIT_LIMIT}")
    if args.user and args.virtual_account:
        raise BadRequest("filter by --user or by --virtual-account, not both")
    if args.server is not None:
        server_key(args.server)
    now = time.time()
    since = when(args.since, now) if args.since else None
    until = when(args.until, now) if args.until else None
    if since is not None and until is not None and until < since:
        raise BadRequest("--until is before --since")
    query = AuditQuery(
        user=identity(args.user, "user") if args.user is not None else None,
        team=identity(args.team, "team") if args.team is not None else None,
        virtual_account=identity(args.virtual_account, "virtual account") if args.virtual_account is not None else None,
        server=args.server,
        tool=args.tool,
        outcome=args.outcome,
        method=args.method,
        request_id=args.request_id,
        since=since,
        until=until,
        limit=args.limit,
    )
    require_database(args.data_dir, database_url(args.database_url))
    async with open_database(args.data_dir, database_url(args.database_url)) as db:
        events = await AuditStore(db).query(query)
    render(events, args.format, out)

"""`virtual-mcp serve | demo | check`: the only module that reads argv."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from virtual_mcp import __version__
from virtual_mcp.audit import OUTCOMES
from virtual_mcp.audit_report import FORMATS, visible
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import BadRequest, GatewayError
from virtual_mcp.fleet.connection import check_redis_url, redis_url
from virtual_mcp.fleet.events import FleetEvent, announce
from virtual_mcp.identity import identity
from virtual_mcp.logs import configure
from virtual_mcp.registry import Registry, build_registry
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.engines import database_url, is_remote

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _state_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a command finds the gateway's state: the data directory (its master key, and its SQLite database unless
    a database URL is given), and the database URL `serve` uses, if any."""
    parser.add_argument("--data-dir", type=Path, default=Path(".virtual-mcp"))
    parser.add_argument(
        "--database-url", metavar="URL", help="the database serve uses (default: $VIRTUAL_MCP_DATABASE_URL, else none)"
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the Redis serve uses, to tell running replicas of a revocation at once (default: "
        "$VIRTUAL_MCP_REDIS_URL, else none: they find it at their next database poll)",
    )


def _on_state(command: Callable[..., Awaitable[T]], args: argparse.Namespace) -> Callable[..., Awaitable[T]]:
    """`command` with the database its arguments name."""
    return partial(command, database_url=database_url(args.database_url))


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (0-65535)")
    return int(text)


def _seconds(minimum: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, at least `minimum` (the settings' own bound, said up front
    rather than as a validation error from deep inside)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text[:20]!r}: give at least {minimum:g} seconds")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtual-mcp", description="An MCP gateway: many MCP servers, one URL.")
    parser.add_argument("--version", action="version", version=f"virtual-mcp {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, default=Path("servers.d"), help="directory of *.yaml (servers.d)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8080)
    serve.add_argument("--data-dir", type=Path, default=Path(".virtual-mcp"), help="gateway state (tokens, vault)")
    serve.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql://... to keep the state there (replicas share it); default: $VIRTUAL_MCP_DATABASE_URL, "
        "else the data directory's SQLite file",
    )
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://... for what replicas share live (one token refresh in the fleet, revocation and catalog "
        "events, request rates); default: $VIRTUAL_MCP_REDIS_URL, else none",
    )
    serve.add_argument(
        "--refresh-lock-lease",
        metavar="SECONDS",
        type=_seconds(0.1),
        default=30.0,
        help="with Redis: how long a replica that stopped (crashed, paused) keeps the fleet's token refresh lock "
        "for a key before another may take it (default 30)",
    )
    serve.add_argument(
        "--local-user", metavar="EMAIL", help="loopback-only local mode: treat every request as this user"
    )
    serve.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN", help="extra browser origin to allow"
    )
    serve.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="a Host name the gateway is reached by"
    )
    serve.add_argument(
        "--request-head-timeout",
        type=_seconds(0.001),
        default=10.0,
        metavar="SECONDS",
        help="a request's head must arrive within this long (default 10)",
    )
    serve.add_argument(
        "--request-body-timeout",
        type=_seconds(0.001),
        default=60.0,
        metavar="SECONDS",
        help="a request's body must arrive within this long of its head (default 60)",
    )

    token = sub.add_parser("token", help="manage gateway tokens (personal and virtual-account)")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="create a token; it is printed once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="EMAIL")
    who.add_argument("--virtual-account", metavar="NAME")
    create.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h (default: never)")
    create.add_argument("--description")
    listing = token_sub.add_parser("list", help="list tokens (never their values)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id; effective on the next request")
    revoke.add_argument("token_id", metavar="ID")
    for p in (create, listing, revoke):
        _state_arguments(p)

    secrets = sub.add_parser("secrets", help="manage secrets referenced as tfy-secret://TENANT:GROUP:KEY")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    put = secrets_sub.add_parser("set", help="store a secret, value read from standard input")
    put.add_argument("reference", metavar="TENANT:GROUP:KEY")
    secret_listing = secrets_sub.add_parser("list", help="list secret references (never values)")
    delete = secrets_sub.add_parser("delete", help="delete a secret")
    delete.add_argument("reference", metavar="TENANT:GROUP:KEY")
    for p in (put, secret_listing, delete):
        _state_arguments(p)

    conns = sub.add_parser("connections", help="a user's connected accounts (per-user OAuth)")
    conns_sub = conns.add_subparsers(dest="connections_action", required=True)
    conn_list = conns_sub.add_parser("list", help="servers the user has connected")
    conn_list.add_argument("--user", metavar="EMAIL", required=True)
    conn_drop = conns_sub.add_parser("disconnect", help="delete the user's stored tokens for a server")
    conn_drop.add_argument("--user", metavar="EMAIL", required=True)
    conn_drop.add_argument("server", metavar="GROUP/SERVER")
    for p in (conn_list, conn_drop):
        _state_arguments(p)

    keys = sub.add_parser("keys", help="manage the master key that wraps every stored secret and token")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True)
    rotate = keys_sub.add_parser("rotate", help="new master key; re-wrap every data key online, payloads untouched")
    _state_arguments(rotate)

    revoke_cmd = sub.add_parser(
        "revoke", help="cut a user off: gateway tokens, stored upstream tokens (revoked at the provider), IdP JWTs"
    )
    revoke_cmd.add_argument("--user", metavar="EMAIL", required=True)
    revoke_cmd.add_argument(
        "--config", type=Path, help="servers.d, to revoke upstream tokens at their providers (RFC 7009)"
    )
    _state_arguments(revoke_cmd)

    audit = sub.add_parser(
        "audit", help="who called what: query the audit trail, newest first (`audit prune --before WHEN` to trim it)"
    )
    audit.add_argument("action", nargs="?", choices=["prune"], help="prune: delete the events older than --before")
    audit.add_argument("--before", metavar="WHEN", help="with prune: ISO 8601 time, or 90d/12h ago")
    audit.add_argument("--user", metavar="EMAIL")
    audit.add_argument("--team", metavar="NAME")
    audit.add_argument("--virtual-account", metavar="NAME")
    audit.add_argument("--server", metavar="GROUP/SERVER")
    audit.add_argument("--tool", metavar="NAME", help="the backend's own tool name")
    audit.add_argument("--outcome", choices=OUTCOMES)
    audit.add_argument("--method", metavar="METHOD", help="e.g. tools/call, tools/list, revoke")
    audit.add_argument("--request-id", metavar="ID")
    audit.add_argument("--since", metavar="WHEN", help="ISO 8601 time (UTC unless an offset is given) or 15m/2h/7d ago")
    audit.add_argument("--until", metavar="WHEN", help="same forms as --since; exclusive")
    audit.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
    audit.add_argument("--format", choices=FORMATS, default="table")
    _state_arguments(audit)

    db = sub.add_parser("db", help="the gateway's database: bring its schema up to date, or copy it elsewhere")
    db_sub = db.add_subparsers(dest="db_action", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply this version's schema migrations (before replicas start)")
    _state_arguments(upgrade)
    copy = db_sub.add_parser("copy", help="copy every row into a new, empty database (e.g. SQLite to PostgreSQL)")
    copy.add_argument("--from", dest="source", metavar="URL", required=True, help="sqlite:DIR or postgresql://...")
    copy.add_argument("--to", dest="target", metavar="URL", required=True, help="postgresql://... or sqlite:DIR")
    copy.add_argument("--data-dir", type=Path, default=Path(".virtual-mcp"), help="where the copy is audited")

    check = sub.add_parser("check", help="validate a configuration directory and print every problem")
    check.add_argument("--config", type=Path, default=Path("servers.d"))

    demo = sub.add_parser("demo", help="run the Northwind example: three backends and the gateway")
    demo.add_argument("--port", type=_port, default=8080)
    demo.add_argument("--backend-base-port", type=_port, default=9101)
    demo.add_argument("--data-dir", type=Path, default=None, help="default: .virtual-mcp/demo in the repository")
    return parser


def load_registry(config_dir: Path) -> Registry:
    return build_registry(load_config_dir(config_dir))


def cmd_check(config_dir: Path) -> int:
    registry = load_registry(config_dir)
    for warning in registry.warnings:
        print(f"warning: {warning}")
    print(
        f"ok: {len(registry.remotes)} remote server(s), {len(registry.virtuals)} virtual server(s), "
        f"{len(registry.endpoints)} endpoint(s) in {config_dir}"
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from virtual_mcp import commands

    action: str = args.token_action
    if action == "create":
        kind = PrincipalKind.USER if args.user else PrincipalKind.VIRTUAL_ACCOUNT
        name = args.user or args.virtual_account
        anyio.run(
            _on_state(commands.token_create, args),
            args.data_dir,
            kind,
            name,
            args.expires_in,
            args.description,
            sys.stdout,
        )
        return 0
    if action == "list":
        anyio.run(_on_state(commands.token_list, args), args.data_dir, args.all, sys.stdout)
        return 0
    _check_redis_url(args)
    if not anyio.run(_on_state(commands.token_revoke, args), args.data_dir, args.token_id):
        print(f"error: no active token with id {args.token_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.token_id}")
    _tell_replicas(args)
    return 0


def _tell_replicas(args: argparse.Namespace) -> bool:
    """After a revocation: tell running replicas at once through Redis, or say when they find it themselves (a
    gateway on the embedded store reads tokens at each request; replicas on PostgreSQL at their revocation poll).
    True if Redis passed it to at least one replica."""
    url = redis_url(args.redis_url)
    heard = anyio.run(announce, url, FleetEvent("revoked")) if url is not None else None
    if heard:
        print(f"running gateways were told at once (Redis: {heard} replica(s) listening)")
        return True
    if url is not None:
        why = "Redis is unreachable" if heard is None else "no replica listens on Redis"
        print(f"running gateways find it at their next revocation poll (within a second): {why}")
    elif is_remote(database_url(args.database_url)):
        print("running gateways find it at their next revocation poll (within a second)")
    return False


def _check_redis_url(args: argparse.Namespace) -> None:
    """A Redis URL that cannot be used is refused before anything is revoked, not after."""
    url = redis_url(args.redis_url)
    if url is not None:
        check_redis_url(url)


def cmd_secrets(args: argparse.Namespace) -> int:
    from virtual_mcp import commands

    if args.secrets_command == "set":
        ref = anyio.run(_on_state(commands.secret_set, args), args.data_dir, args.reference, sys.stdin.read())
        print(f"stored {ref.uri}")
        return 0
    if args.secrets_command == "list":
        anyio.run(_on_state(commands.secret_list, args), args.data_dir, sys.stdout)
        return 0
    if not anyio.run(_on_state(commands.secret_delete, args), args.data_dir, args.reference):
        print(f"error: no secret {args.reference!r}", file=sys.stderr)
        return 1
    print(f"deleted {args.reference}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    registry = load_registry(args.config)
    for warning in registry.warnings:
        logger.warning("%s", warning)
    settings = GatewaySettings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        database_url=database_url(args.database_url),
        redis_url=redis_url(args.redis_url),
        local_user=args.local_user,
        allowed_origins=tuple(args.allow_origin),
        allowed_hosts=tuple(args.allow_host),
        limits=registry.limits,
        request_head_timeout_seconds=args.request_head_timeout,
        refresh_lock_lease_seconds=args.refresh_lock_lease,
        request_body_timeout_seconds=args.request_body_timeout,
    )
    anyio.run(_serve, registry, settings, backend_options=_event_loop())
    return 0


def _event_loop() -> dict[str, Any]:
    """libuv's event loop where uvloop is installed (not on Windows), asyncio's own otherwise."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _serve(registry: Registry, settings: GatewaySettings) -> None:
    import uvicorn

    from virtual_mcp.gateway.assemble import production_app
    from virtual_mcp.gateway.listener import server_config

    async with production_app(registry, settings) as app:
        config = server_config(app, settings)
        logger.info("listening on http://%s:%d", settings.host, settings.port)
        # What start-up built (modules, configuration, the application) lives as long as the process: it is moved
        # out of the cycle collector's view, so a full collection scans what serving creates, not 100,000 start-up
        # objects (about 30 ms, a pause every caller in flight would feel).
        gc.collect()
        gc.freeze()
        await uvicorn.Server(config).serve()


_AUDIT_FILTERS = (
    "user",
    "team",
    "virtual_account",
    "server",
    "tool",
    "outcome",
    "method",
    "request_id",
    "since",
    "until",
)


def cmd_audit_prune(args: argparse.Namespace) -> int:
    from virtual_mcp import commands

    if args.before is None:
        raise BadRequest("audit prune needs --before WHEN (e.g. --before 90d: what is older than 90 days)")
    given = [f"--{name.replace('_', '-')}" for name in _AUDIT_FILTERS if getattr(args, name) is not None]
    if given:
        raise BadRequest(f"audit prune deletes by time only (--before); {', '.join(given)} is for queries")
    deleted = anyio.run(_on_state(commands.audit_prune, args), args.data_dir, args.before)
    print(f"deleted {deleted} audit event(s) older than {args.before}; the prune itself is recorded")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from virtual_mcp import commands

    if args.db_action == "upgrade":
        name, version = anyio.run(_on_state(commands.db_upgrade, args), args.data_dir)
        print(f"{name}: schema version {version}")
        return 0
    copied = anyio.run(commands.db_copy, args.data_dir, args.source, args.target)
    print(f"copied {sum(copied.values())} row(s): " + ", ".join(f"{t} {n}" for t, n in copied.items()))
    print("the master key is not in the database: give the replicas the same key file or VIRTUAL_MCP_MASTER_KEY")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_json)
    try:
        if args.command == "check":
            return cmd_check(args.config)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "token":
            return cmd_token(args)
        if args.command == "secrets":
            return cmd_secrets(args)
        if args.command == "connections":
            from virtual_mcp import commands

            user = identity(args.user, "user")
            if args.connections_action == "list":
                anyio.run(_on_state(commands.connections_list, args), args.data_dir, user, sys.stdout)
                return 0
            if not anyio.run(_on_state(commands.connections_disconnect, args), args.data_dir, user, args.server):
                print(f"error: {user} has no connection to {args.server}", file=sys.stderr)
                return 1
            print(f"disconnected {user} from {args.server}")
            return 0
        if args.command == "revoke":
            from virtual_mcp import commands

            _check_redis_url(args)
            detail = anyio.run(_on_state(commands.revoke_user, args), args.data_dir, args.config, args.user)
            print(f"revoked {detail['user']}: {detail['gateway_tokens_revoked']} gateway token(s)")
            for server, outcome in detail["upstream"].items():
                print(f"  {server}: {visible(outcome)}")  # may quote a provider's error: shown, never obeyed
            if not _tell_replicas(args) and not is_remote(database_url(args.database_url)):
                print("running gateways drop what they hold for this user within a second")
            if not detail["known"]:
                where = "" if args.config else " (give --config to look there too)"
                print(
                    f"error: no token, connected account or audit record of {detail['user']}, and no team or "
                    f"subject in the configuration names them{where}: check the spelling. The revocation is "
                    "recorded anyway: IdP JWTs for this name issued before now are refused.",
                    file=sys.stderr,
                )
                return 1
            return 0
        if args.command == "audit":
            from virtual_mcp import commands

            if args.action == "prune":
                return cmd_audit_prune(args)
            if args.before is not None:
                raise BadRequest("--before is for `audit prune`; to query, use --until")
            anyio.run(commands.audit_query, args, sys.stdout)
            return 0
        if args.command == "db":
            return cmd_db(args)
        if args.command == "keys":
            from virtual_mcp import commands

            kid, secrets, tokens = anyio.run(_on_state(commands.keys_rotate, args), args.data_dir)
            print(f"new master key {kid}; re-wrapped {secrets} secret(s) and {tokens} token record(s)")
            return 0
        if args.command == "demo":
            from virtual_mcp.demo import run_demo

            return run_demo(args.port, args.backend_base_port, args.data_dir)
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())

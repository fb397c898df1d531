"""`virtual-mcp serve | demo | check`: the only module that reads argv."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from virtual_mcp import __version__
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.errors import GatewayError
from virtual_mcp.logs import configure
from virtual_mcp.registry import Registry, build_registry

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtual-mcp", description="An MCP gateway: many MCP servers, one URL.")
    parser.add_argument("--version", action="version", version=f"virtual-mcp {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, default=Path("servers.d"), help="directory of *.yaml (servers.d)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", type=Path, default=Path(".virtual-mcp"), help="gateway state (tokens, vault)")
    serve.add_argument(
        "--local-user", metavar="EMAIL", help="loopback-only local mode: treat every request as this user"
    )
    serve.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN", help="extra browser origin to allow"
    )

    check = sub.add_parser("check", help="validate a configuration directory and print every problem")
    check.add_argument("--config", type=Path, default=Path("servers.d"))

    demo = sub.add_parser("demo", help="run the Northwind example: three backends and the gateway")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--backend-base-port", type=int, default=9101)
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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from virtual_mcp.gateway.app import create_app

    registry = load_registry(args.config)
    for warning in registry.warnings:
        logger.warning("%s", warning)
    settings = GatewaySettings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        local_user=args.local_user,
        allowed_origins=tuple(args.allow_origin),
    )
    app = create_app(registry, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_json)
    try:
        if args.command == "check":
            return cmd_check(args.config)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "demo":
            from virtual_mcp.demo import run_demo

            return run_demo(args.port, args.backend_base_port)
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())

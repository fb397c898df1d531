"""One TLS context per process for every outbound client (virtual_mcp/tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.support import write_config
from virtual_mcp import tls
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.gateway.app import create_app
from virtual_mcp.registry import build_registry


def test_gateways_built_in_one_process_load_the_ca_bundle_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Any] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    tls.client_context.cache_clear()  # as in a fresh process
    registry = build_registry(load_config_dir(write_config(tmp_path / "servers.d", {"a": "https://a.example"})))
    for _ in range(3):  # e.g. `serve` after a reload, or the demo's gateways
        create_app(registry, GatewaySettings(local_user="alice@northwind.example"))
    assert len(loads) == 1
    assert tls.client_context() is tls.client_context()

"""The lab the wire tests share: the lab backend with a `held` tool (answers when the test lets it, notices being
cancelled) behind the gateway with its production security planes, and alice's token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tests.backends import Probe, build_lab
from tests.gateway.test_timing import group_doc
from tests.lab_config import ALICE, BOB, PLATFORM, write_identities
from tests.security_support import SecureGateway, secure_gateway
from tests.support import Served, serve
from virtual_mcp.types import PrincipalKind


@dataclass
class HeldLab:
    gw: SecureGateway
    backend: Served
    probe: Probe
    alice: str
    release: anyio.Event  # lets the backend's `held` tool answer


@asynccontextmanager
async def held_lab(tmp_path: Path, **settings: Any) -> AsyncIterator[HeldLab]:
    probe = Probe()
    release = anyio.Event()
    backend_app = build_lab(probe)

    @backend_app.tool
    async def held() -> str:
        """Answers once the test lets it (or is cancelled)."""
        probe.slow_started.set()
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            probe.slow_cancelled.set()
            raise
        return "released"

    async with serve(backend_app.http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(url=backend.url))
        write_identities(config, {PLATFORM: [ALICE, BOB]})
        async with secure_gateway(config, tmp_path / "data", **settings) as gw:
            yield HeldLab(gw, backend, probe, await gw.token(PrincipalKind.USER, ALICE), release)

"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, npm, pinned in conformance/package.json;
every server scenario, `--suite all`) against the fixture server it specifies (tests/interop/conformance_fixture.py):
directly, and through the gateway to the same fixture speaking each era. Each scenario's result (checks passed,
checks failed) must be the same through the gateway as directly.

The suite's client speaks 2025-11-25 only; the 2026-07-28 client era is compared by the parity tests
(tests/gateway/test_parity.py, tests/interop/test_everything.py). fastmcp's server of the 2026-07-28 era has no
`subscriptions/listen`: the gateway subscribes on a 2025-11-25 session to it instead (it speaks both), so the
subscription scenarios pass through it too.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import anyio
import anyio.to_thread
from fastmcp.server.event_store import EventStore

from tests.interop.conformance_fixture import conformance_fixture
from tests.node_packages import NodePackage
from tests.support import LegacyOnly, gateway, serve, write_config

PACKAGE = NodePackage(Path(__file__).parent / "conformance", "the MCP conformance suite")
ENTRY = PACKAGE.directory / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
_SUMMARY = re.compile(r"^[✓✗] (?P<scenario>[\w-]+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$", re.MULTILINE)

Results = dict[str, tuple[int, int]]


async def suite(url: str, workdir: Path) -> Results:
    """Every server scenario against `url`: each scenario's (checks passed, checks failed)."""
    node = await anyio.to_thread.run_sync(PACKAGE.ensure_installed)
    done = await anyio.run_process(
        [str(node), str(ENTRY), "server", "--url", url, "--suite", "all"],
        cwd=workdir,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    report = done.stdout.decode()
    results = {m["scenario"]: (int(m["passed"]), int(m["failed"])) for m in _SUMMARY.finditer(report)}
    assert len(results) >= 30, report[-3000:]
    return results


def fixture_app() -> object:
    # A fixture as the suite wants it: an event store (resumable streams) and DNS-rebinding protection.
    return conformance_fixture().http_app(
        path="/mcp", host_origin_protection=True, event_store=EventStore(), retry_interval=100
    )


async def test_the_conformance_suite_gives_the_same_result_through_the_gateway(tmp_path: Path) -> None:
    async with (
        serve(LegacyOnly(fixture_app())) as legacy,  # type: ignore[arg-type]
        serve(fixture_app()) as modern,  # type: ignore[arg-type]
    ):
        for name in ("direct", "legacy", "modern"):
            (tmp_path / name).mkdir()
        direct = await suite(f"{legacy.url}/mcp", tmp_path / "direct")
        assert all(failed == 0 for _, failed in direct.values()), direct  # the fixture passes every scenario
        config = write_config(tmp_path / "servers.d", {"legacy": legacy.url, "modern": modern.url})
        async with gateway(config) as gw:
            through_legacy = await suite(f"{gw.url}/mcp-server/lab/legacy/server", tmp_path / "legacy")
            through_modern = await suite(f"{gw.url}/mcp-server/lab/modern/server", tmp_path / "modern")
    assert through_legacy == direct
    assert through_modern == direct

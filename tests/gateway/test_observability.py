"""/metrics (parsed with the Prometheus client library's own parser), /healthz and /readyz, and JSON log lines that
carry the request id of the answer and the audit record."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.service.test_audit import ALICE, lab
from tests.sensitive import SENSITIVE
from virtual_mcp.fleet.connection import redis_url
from virtual_mcp.logs import JsonFormatter, RedactionFilter, RequestIdFilter
from virtual_mcp.vault.keys import KEY_FILE_NAME

PLAIN = "/mcp-server/lab/plain/server"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_calls_phases_and_sessions(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx.AsyncClient() as http:
        for text in ("a", "b"):
            await t.call(PLAIN, "echo", {"text": text})
        await t.call(PLAIN, "fail", {"reason": "x"})
        await t.call("/mcp", "lab__hidden__echo", {"text": "x"})
        await t.call("/mcp", "lab__plain__a_name_the_caller_made_up", {})
        await t.call("/mcp", "lab__logistics__headers", {})  # not a JWT: the credential is refused
        t.plain.stop()
        await t.plain.server.shutdown()
        await t.call(PLAIN, "echo", {"text": "down"})

        page = await http.get(f"{t.gw.url}/metrics")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
        found = samples(page.text)
        calls = "vmcp_tool_calls_total"
        assert value(found, calls, endpoint=PLAIN, server="lab/plain", tool="echo", outcome="allowed") == 2
        assert value(found, calls, endpoint=PLAIN, server="lab/plain", tool="fail", outcome="allowed") == 1
        assert value(found, calls, endpoint=PLAIN, server="lab/plain", tool="echo", outcome="failed") == 1
        assert value(found, calls, endpoint="/mcp", server="lab/hidden", tool="(unknown)", outcome="denied") == 1
        assert value(found, calls, endpoint="/mcp", server="lab/plain", tool="(unknown)", outcome="denied") == 1
        # The gateway could not list that backend's tools with alice's credential: it does not know the name.
        assert value(found, calls, endpoint="/mcp", server="lab/logistics", tool="(unknown)", outcome="failed") == 1
        # A name the caller made up is never a label value.
        assert "a_name_the_caller_made_up" not in page.text
        assert value(found, "vmcp_upstream_errors_total", server="lab/plain", kind="UpstreamUnavailable") == 1
        assert value(found, "vmcp_upstream_errors_total", server="lab/logistics", kind="PassthroughRefused") == 1
        assert value(found, "vmcp_tool_call_duration_seconds_count", server="lab/plain") == 4

        # Phases: every MCP request observed its total; calls spent time upstream.
        posts = sum(v for (name, labels), v in found.items() if name == "vmcp_http_requests_total")
        assert value(found, "vmcp_phase_duration_seconds_count", phase="total") == posts > 7
        assert value(found, "vmcp_phase_duration_seconds_count", phase="upstream") >= 4
        assert value(found, "vmcp_phase_duration_seconds_count", phase="auth") == posts
        assert value(found, "vmcp_http_requests_total", endpoint=PLAIN, status="200") > 0
        # Catalog: fetched once per backend, then served from memory.
        assert value(found, "vmcp_cache_lookups_total", cache="catalog", result="hit") > 0
        assert value(found, "vmcp_cache_lookups_total", cache="catalog", result="miss") > 0
        assert value(found, "vmcp_upstream_sessions") >= 2
        assert value(found, "vmcp_audit_queue") >= 0
        assert not [v for v in SENSITIVE if v in page.text]


async def test_an_unconfigured_path_is_not_a_label(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx.AsyncClient() as http:
        headers = {"authorization": f"Bearer {t.alice}", "accept": "application/json, text/event-stream"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert (
            await http.post(f"{t.gw.url}/mcp-server/x/made-up-name/server", json=body, headers=headers)
        ).status_code == 403
        found = samples((await http.get(f"{t.gw.url}/metrics")).text)
        assert value(found, "vmcp_http_requests_total", endpoint="(unconfigured)", status="403") == 1
        assert not [key for key in found if "made-up-name" in json.dumps(key)]


async def test_readiness_follows_the_vault(tmp_path: Path) -> None:
    async with lab(tmp_path) as t, httpx.AsyncClient() as http:
        ready = await http.get(f"{t.gw.url}/readyz")
        assert ready.status_code == 200
        checks = {"config": "5 endpoint(s)", "database": "ok", "vault": "ok"}
        if redis_url(None) is not None:  # the PostgreSQL and Redis pass: Redis is checked too
            checks["redis"] = "ok"
        assert ready.json() == {"status": "ready", "checks": checks}
        key_file = t.gw.data_dir / KEY_FILE_NAME
        saved = key_file.read_bytes()
        key_file.unlink()
        broken = await http.get(f"{t.gw.url}/readyz")
        assert broken.status_code == 503
        problem = broken.json()["checks"]["vault"]
        assert broken.json()["status"] == "not ready" and "master key" in problem
        assert (await http.get(f"{t.gw.url}/healthz")).status_code == 200  # alive, just not ready
        key_file.write_bytes(saved)
        key_file.chmod(0o600)
        assert (await http.get(f"{t.gw.url}/readyz")).status_code == 200


async def test_json_log_lines_carry_the_request_id(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    gateway_logger = logging.getLogger("virtual_mcp")
    gateway_logger.addHandler(handler)
    try:
        async with lab(tmp_path) as t, httpx.AsyncClient() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            refused = await http.post(
                f"{t.gw.url}{PLAIN}", json=body, headers={"authorization": "Bearer vmcp_000000000000_forged"}
            )
            assert refused.status_code == 401
            await t.call(PLAIN, "echo", {"text": "logged"})
            [call] = await t.gw.audit(user=ALICE)
    finally:
        gateway_logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    refusal = [line for line in lines if line["msg"].startswith(f"refused POST on {PLAIN}")]
    assert refusal and refusal[0]["request_id"] == refused.headers["x-request-id"]
    assert "vmcp_000000000000_forged" not in stream.getvalue()
    timing = [line for line in lines if line.get("request_id") == call.request_id]
    assert timing, "the call's own lines carry its id"

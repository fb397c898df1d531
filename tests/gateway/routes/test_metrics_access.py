"""/metrics names every configured server and tool in its labels, so it is not public: loopback clients only by
default, or anyone with the bearer token of the gateway document's `metrics.bearer_token`. A remote client is
simulated the way a reverse proxy on the same host presents one: `X-Forwarded-For` from loopback, which uvicorn
(its default `forwarded_allow_ips`) turns into the request's client address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.backends import build_lab
from tests.sensitive import mark
from tests.support import Served, gateway, serve, write_config
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.errors import ConfigError

REMOTE = {"x-forwarded-for": "203.0.113.9"}
METRICS_TOKEN = "metrics-token-5c1e0a9b"
mark(METRICS_TOKEN)


@asynccontextmanager
async def lab(tmp_path: Path, gateway_doc: str | None = None) -> AsyncIterator[tuple[Served, httpx.AsyncClient]]:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_config(tmp_path / "servers.d", {"secret-tool-server": backend.url})
        if gateway_doc is not None:
            (config / "gateway.yaml").write_text(gateway_doc)
        secrets = {"tfy-secret://gw:metrics:token": METRICS_TOKEN}
        async with gateway(config, secrets=secrets) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            # A call, so that the metrics name the server and the tool.
            async with httpx.AsyncClient() as mcp_http:
                await _call(mcp_http, gw.url)
            yield gw, http


async def _call(http: httpx.AsyncClient, url: str) -> None:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": meta},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    answer = await http.post(f"{url}/mcp-server/lab/secret-tool-server/server", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_by_default_only_loopback_clients_read_the_metrics(tmp_path: Path) -> None:
    async with lab(tmp_path) as (_, http):
        local = await http.get("/metrics")
        assert local.status_code == 200 and 'server="lab/secret-tool-server"' in local.text
        remote = await http.get("/metrics", headers=REMOTE)
        assert remote.status_code == 403
        assert remote.json()["error"] == {
            "code": -32003,
            "message": "Forbidden: /metrics is served to loopback clients only (set metrics.bearer_token in the "
            "gateway document to serve it to others)",
        }
        assert "secret-tool-server" not in remote.text and "echo" not in remote.text
        # A token is no way in when none is configured.
        assert (await http.get("/metrics", headers={**REMOTE, "authorization": "Bearer x"})).status_code == 403


async def test_with_a_configured_token_only_its_bearer_reads_the_metrics(tmp_path: Path) -> None:
    doc = "type: gateway\nmetrics:\n  bearer_token: tfy-secret://gw:metrics:token\n"
    async with lab(tmp_path, doc) as (_, http):
        good = {"authorization": f"Bearer {METRICS_TOKEN}"}
        assert (await http.get("/metrics", headers={**REMOTE, **good})).status_code == 200
        assert (await http.get("/metrics", headers=good)).status_code == 200
        for headers, says in (
            (REMOTE, "/metrics needs the metrics bearer token (Authorization: Bearer ...)"),
            ({}, "/metrics needs the metrics bearer token (Authorization: Bearer ...)"),  # loopback too
            ({**REMOTE, "authorization": "Bearer wrong"}, "/metrics: wrong bearer token"),
            ({**REMOTE, "authorization": f"Basic {METRICS_TOKEN}"}, "/metrics needs the metrics bearer token"),
            ({**REMOTE, "authorization": f"Bearer {METRICS_TOKEN}x"}, "/metrics: wrong bearer token"),
        ):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert says in refused.json()["error"]["message"] and "secret-tool-server" not in refused.text


@pytest.mark.parametrize("value", ["a-literal-token", "tfy-secret://only-two:parts", ""])
def test_the_metrics_token_must_be_a_secret_reference(tmp_path: Path, value: str) -> None:
    config = write_config(tmp_path / "servers.d", {"s": "http://127.0.0.1:9"})
    (config / "gateway.yaml").write_text(f"type: gateway\nmetrics:\n  bearer_token: '{value}'\n")
    with pytest.raises(ConfigError, match="bearer_token must be a secret reference"):
        load_config_dir(config)

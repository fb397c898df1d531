"""The audit record of a call is always written and always bounded, whatever the caller or the backend sent: a deeply
nested argument, a 4 MB tool name, a lone surrogate, NaN; a refusal records the method the body asked for, not the
one a header claims. Real gateway with its production stores, a real backend, raw HTTP sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.audit_lab import HIDDEN, PLAIN, audit_lab, in_both_sinks, modern_call

MAX_DETAIL_DEPTH = 16  # virtual_mcp/audit_bounds.py; literal, so this file also runs against older code
MAX_DETAIL_CHARS = 16_384


def nested(depth: int, bottom: Any = "bottom") -> Any:
    value = bottom
    for _ in range(depth):
        value = {"a": value}
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, dict) and "a" in value:
        value, depth = value["a"], depth + 1
    return depth


async def test_a_deeply_nested_argument_is_served_recorded_and_counted(tmp_path: Path) -> None:
    """Was: redaction recursed until RecursionError, after the backend had run the call: the caller got -32603 and
    neither an audit record nor a metric was written."""
    async with audit_lab(tmp_path) as lab:
        session = await lab.session()
        answer, request_id = await session.call("take", {"value": nested(600)})
        assert answer["result"]["structuredContent"] == {"result": "took it"}, answer
        event = await in_both_sinks(lab.gw, request_id)
        assert (event.tool, event.outcome, event.error) == ("take", "allowed", None)
        assert event.detail is not None
        arguments = event.detail["arguments"]
        # Rendered down to the depth limit (the detail's own two levels included), then a marker says what is left.
        assert depth_of(arguments["value"]) == MAX_DETAIL_DEPTH - 2
        assert "nested deeper than 16 levels" in json.dumps(arguments)
        assert event.detail["result"]["structuredContent"] == {"result": "took it"}
        calls = lab.gw.metrics.registry.get_sample_value(
            "vmcp_tool_calls_total", {"endpoint": PLAIN, "server": "lab/plain", "tool": "take", "outcome": "allowed"}
        )
        assert calls == 1
        await lab.served_and_audited()


async def test_a_huge_or_deep_result_is_recorded_within_bounds(tmp_path: Path) -> None:
    async with audit_lab(tmp_path) as lab:
        session = await lab.session()
        answer, request_id = await session.call("huge", {"size": 3_000_000, "depth": 100})
        assert "result" in answer, str(answer)[:300]
        event = await in_both_sinks(lab.gw, request_id)
        assert event.outcome == "allowed" and event.detail is not None
        assert len(json.dumps(event.detail, separators=(",", ":"))) <= MAX_DETAIL_CHARS
        assert "nested deeper than 16 levels" in json.dumps(event.detail)
        answer, request_id = await session.call("huge", {"size": 3_000_000})
        event = await in_both_sinks(lab.gw, request_id)
        assert event.detail is not None
        [text] = event.detail["result"]["content"]
        full = len('{"value":""}') + 3_000_000  # the text block is the result as JSON
        assert len(text["text"]) == 1024 and text["text"].endswith(f"…[truncated, {full} chars]")
        await lab.served_and_audited()


async def test_a_4mb_tool_name_is_recorded_bounded(tmp_path: Path) -> None:
    """Was: a refused call wrote the caller's tool name to the trail whole, about 4 MB per request, in both sinks."""
    async with audit_lab(tmp_path) as lab:
        name = "n" * 4_000_000
        session = await lab.session()
        answer, request_id = await session.call(name, {})
        assert answer["error"]["code"] == -32602, str(answer)[:300]
        event = await in_both_sinks(lab.gw, request_id)
        assert event.outcome == "denied"
        assert event.tool is not None and len(event.tool) == 256
        assert event.tool.endswith("…[truncated, 4000000 chars]") and event.tool.startswith("nnnn")
        assert (lab.gw.data_dir / "audit.jsonl").stat().st_size < 100_000
        await lab.served_and_audited()


async def test_a_refusal_records_the_method_of_the_body_not_of_the_header(tmp_path: Path) -> None:
    """Was: the record of a refused request took its method from the caller's Mcp-Method header, so a caller could
    make a tools/call look like anything in the trail (and make it 64 characters of whatever they liked)."""
    async with audit_lab(tmp_path) as lab:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
        headers = {"authorization": f"Bearer {lab.alice}", "accept": "application/json, text/event-stream"}
        refused = await lab.http.post(f"{lab.url}{HIDDEN}", json=body, headers={**headers, "mcp-method": "ping"})
        assert refused.status_code == 403
        event = await in_both_sinks(lab.gw, refused.headers["x-request-id"])
        assert (event.method, event.outcome, event.server) == ("tools/call", "denied", "lab/hidden")
        long_method = {**body, "method": "m" * 100_000}
        refused = await lab.http.post(f"{lab.url}{HIDDEN}", json=long_method, headers=headers)
        assert refused.status_code == 403
        event = await in_both_sinks(lab.gw, refused.headers["x-request-id"])
        assert len(event.method) == 64 and event.method.endswith("…[truncated, 100000 chars]")
        await lab.served_and_audited()


async def test_values_no_sink_could_store_are_recorded_escaped(tmp_path: Path) -> None:
    """Arguments with a lone surrogate (valid JSON, not valid UTF-8) made the JSON lines sink fail on the whole
    batch, so the records of every caller written with it were missing there; NaN made lines no strict JSON parser
    reads. Now each is written as a visible escape or marker, in both sinks."""
    async with audit_lab(tmp_path) as lab:
        answer, request_id = await modern_call(lab, "take", '{"value": ["t\\ud800x", NaN, -Infinity]}')
        assert "result" in answer or "error" in answer
        event = await in_both_sinks(lab.gw, request_id)
        assert event.detail is not None
        assert event.detail["arguments"] == {"value": ["t\\ud800x", "…[nan]", "…[-inf]"]}
        for line in (lab.gw.data_dir / "audit.jsonl").read_text().splitlines():
            json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in audit.jsonl"))
        await lab.served_and_audited()

"""The rendering of audit records: every field and every detail bounded, storable and JSON, whatever it is given."""

from __future__ import annotations

import json
from typing import Any

import pytest

from virtual_mcp.audit import AuditEvent, bound, event_json
from virtual_mcp.audit_bounds import (
    MAX_DETAIL_CHARS,
    MAX_DETAIL_ITEMS,
    MAX_DETAIL_STRING,
    clip,
    render_detail,
    render_parts,
    storable,
)


def stored(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 30, "x" * 11),
        ("x" * 100, 30, "x" * 7 + "…[truncated, 100 chars]"),
        ("\ud800ab", 10, "\\ud800ab"),
        ("é" * 40, 30, "é" * 8 + "…[truncated, 40 chars]"),
    ],
)
def test_clip(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected
    assert len(clip(text, limit)) <= limit
    clip(text, limit).encode("utf-8")


def test_storable_keeps_valid_text_and_escapes_lone_surrogates() -> None:
    assert storable("naïve ✓ \U0001f600") == "naïve ✓ \U0001f600"
    assert storable("a\udc80b") == "a\\udc80b"


def test_depth_is_bounded_without_recursion_trouble() -> None:
    value: Any = "bottom"
    for _ in range(100_000):  # far beyond the interpreter's recursion limit
        value = [value]
    rendered = render_detail({"deep": value})
    assert "list nested deeper than 16 levels" in stored(rendered)


def test_size_is_bounded_overall_per_string_and_per_container() -> None:
    value = {f"k{i}": "v" * 5000 for i in range(500)}
    rendered = render_detail(value)
    assert len(stored(rendered)) <= MAX_DETAIL_CHARS
    assert all(len(v) <= MAX_DETAIL_STRING for v in rendered.values())
    assert list(rendered)[-1] == "…"
    items = render_detail(list(range(10_000)))
    assert len(items) == MAX_DETAIL_ITEMS and items[-1] == f"…[{10_000 - MAX_DETAIL_ITEMS + 1} more items]"
    keys = render_detail({str(i): i for i in range(10_000)})
    assert len(keys) == MAX_DETAIL_ITEMS and keys["…"] == f"[{10_000 - MAX_DETAIL_ITEMS + 1} more entries]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), "…[nan]"),
        (float("inf"), "…[inf]"),
        (10**400, "…[integer of 1329 bits]"),
        (2**63 - 1, 2**63 - 1),
        (b"\x00\x01", "…[2 bytes]"),
        (object(), "…[object]"),
        ({1: "a", None: "b", (1, 2): "c"}, {"1": "a", "None": "b", "[tuple]": "c"}),
        ({1: "a", "1": "b"}, {"1": "a", "1 (1)": "b"}),
        ({"x": {3}}, {"x": [3]}),
        ("a\udc80", "a\\udc80"),
        ("\x00\x1b[2J", "\x00\x1b[2J"),  # kept exactly: escaped by JSON where stored, visibly where shown
    ],
)
def test_values_json_cannot_hold_become_markers(value: Any, expected: Any) -> None:
    assert render_detail(value) == expected
    stored(render_detail(value)).encode("utf-8")


def test_secrets_are_scrubbed_before_any_cut() -> None:
    secret = "s3cr3t-" + "z" * 60
    text = "a" * (MAX_DETAIL_STRING - 20) + secret + "b" * 3_000_000
    value = {"note": text, "password": "hunter2", "PIN": "1234"}
    rendered = render_detail(value, frozenset({"pin"}), scrub=lambda t: t.replace(secret, "[REDACTED]"))
    assert rendered["password"] == rendered["PIN"] == "[REDACTED]"
    assert "s3cr3t" not in rendered["note"] and "zzzz" not in rendered["note"]
    assert rendered["note"].endswith(f"…[truncated, {len(text)} chars]")
    bearer = render_detail("x" * 1000 + " Bearer abcdefghijklmnopqrstuvwxyz0123456789")
    assert "abcdefgh" not in bearer


def test_parts_are_never_redacted_by_their_own_name() -> None:
    assert render_parts({"arguments": {"a": 1}, "result": {"b": 2}}, frozenset({"result"})) == {
        "arguments": {"a": 1},
        "result": {"b": 2},
    }


def test_every_field_of_an_event_is_bounded() -> None:
    event = AuditEvent(
        ts=1.0,
        request_id="r" * 1000,
        subject="user:" + "s" * 1000,
        kind="user",
        name="n" * 1000,
        teams=tuple(f"team{i}" for i in range(1000)),
        endpoint="/" + "e" * 100_000,
        method="m\ud800" * 1000,
        server="g/" + "s" * 1000,
        tool="t" * 4_000_000,
        called="c" * 1000,
        error="e" * 100_000,
        auth_mode="a" * 1000,
        forwarded_headers=tuple(f"h{i}" for i in range(100)),
        detail={"x": float("nan")},
        target="user:" + "t" * 1000,
    )
    bound(event)
    line = event_json(event)
    assert len(line) < 8000 and line.isascii()
    assert len(event.tool or "") == 256 and (event.tool or "").endswith("…[truncated, 4000000 chars]")
    assert len(event.teams) == 64 and event.teams[-1] == "…[937 more]"
    assert len(event.forwarded_headers) == 32 and event.forwarded_headers[-1] == "…[69 more]"
    assert event.method.startswith("m\\ud800")
    assert event.detail is not None and event.detail["x"] == "…[nan]"

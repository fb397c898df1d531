"""A backend's message is refused when nested deeper than the limit, by a check that cannot be fooled by brackets in
strings, and the credentials its request presented are removed from it."""

from __future__ import annotations

import json

import pytest

from virtual_mcp.outbound.scrubber import REDACTED, Scrubber
from virtual_mcp.upstream.answers import MAX_ANSWER_DEPTH, AnswerTooDeep, nested_deeper, parse

LIMIT = MAX_ANSWER_DEPTH


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("raw", "too_deep"),
    [
        (arrays(LIMIT), False),
        (arrays(LIMIT + 1), True),
        (objects(LIMIT), False),
        (objects(LIMIT + 1), True),
        (b"[" + b"[1]," * 5000 + b"1]", False),  # wide, not deep
        (json.dumps(["[" * 5000, "]" * 5000, "{" * 300]).encode(), False),  # brackets inside strings
        # Closing brackets in strings between the levels do not hide them...
        (b"[" + b'"]",[' * (LIMIT + 5) + b"1" + b"]" * (LIMIT + 6), True),
        # ...nor do escaped quotes and backslashes that make a string look closed early.
        (b'["\\"]\\\\",' + arrays(LIMIT + 1) + b"]", True),
        (b'["\\\\\\"]", ' + arrays(LIMIT - 2) + b"]", False),
    ],
)
def test_depth_is_measured_outside_strings(raw: bytes, too_deep: bool) -> None:
    json.loads(raw)  # each case is valid JSON
    assert nested_deeper(raw) is too_deep


@pytest.mark.parametrize(
    "raw",
    [arrays(100_000), b"[" * 100_000, b'{"a":' * 50_000, arrays(LIMIT + 1)],
)
def test_too_deep_is_one_precise_error_never_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(AnswerTooDeep) as refused:
        parse(raw)
    assert str(refused.value) == f"the answer is nested deeper than {LIMIT} levels (the gateway's limit)"


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        parse(b"{not json")


def test_parse_removes_presented_values_and_counts_the_echo() -> None:
    scrubber = Scrubber(["Bearer s3cr3t-t0ken-value"])
    message = parse('{"error": {"message": "bad Bearer s3cr3t-t0ken-value", "data": ["s3cr3t-t0ken-value"]}}', scrubber)
    assert message == {"error": {"message": f"bad {REDACTED}", "data": [REDACTED]}}
    assert scrubber.echoes == 1
    assert parse('{"result": {}}', scrubber) == {"result": {}} and scrubber.echoes == 1

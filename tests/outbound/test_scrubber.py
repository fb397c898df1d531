"""The scrubber finds the values a credential presented, in the spellings an echo gives them, and nothing else."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest

from virtual_mcp.outbound.scrubber import REDACTED, Scrubber

TOKEN = "ya29.a0Af+H6/SMBxyz_Q-9~k="  # every character class a bearer token may use (RFC 6750 b64token)
HEADER = f"Bearer {TOKEN}"


def b64_inside(data: str, offset: int, encode: Callable[[bytes], bytes] = base64.b64encode) -> str:
    """`data` base64-encoded inside a longer text, starting `offset` bytes in (as in a dump of many headers)."""
    return encode(b"k" * offset + data.encode() + b"tail").decode()


def b64decoded(text: str) -> str:
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_")).decode("latin-1")


# Each spelling an echo may use, and how the caller would read it back.
SPELLINGS: dict[str, tuple[str, Callable[[str], str]]] = {
    "as sent": (HEADER, str),
    "bare token": (TOKEN, str),
    "url-encoded": (quote(TOKEN, safe=""), unquote),
    "form-encoded header": (quote_plus(HEADER), unquote_plus),
    "base64 at offset 0": (b64_inside(TOKEN, 0), b64decoded),
    "base64 at offset 1": (b64_inside(TOKEN, 1), b64decoded),
    "base64 at offset 2": (b64_inside(TOKEN, 2), b64decoded),
    "url-safe base64": (b64_inside(TOKEN, 1, base64.urlsafe_b64encode), b64decoded),
    "whole header in base64": (base64.b64encode(HEADER.encode()).decode(), b64decoded),
}


def answer(text: str) -> tuple[bytes, Any]:
    message = {"result": {"content": [{"type": "text", "text": text}], "k": {text: [text]}}}
    raw = json.dumps(message).encode()
    return raw, json.loads(raw)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_each_spelling_is_found_and_replaced_in_its_own_encoding(spelling: str) -> None:
    """Replaced everywhere (strings and keys, any depth), and what was encoded still decodes (a base64 image stays
    base64), to text without the token."""
    encoded, decode = SPELLINGS[spelling]
    assert TOKEN in decode(encoded)
    scrubber = Scrubber([HEADER])
    raw, parsed = answer(encoded)
    assert scrubber.found_in(raw, parsed)
    clean = scrubber.scrub(parsed)["result"]
    [key] = clean["k"]
    for text in (clean["content"][0]["text"], key, clean["k"][key][0]):
        assert encoded not in text and TOKEN not in decode(text)
    if decode is str:
        assert clean["content"][0]["text"] == REDACTED


@pytest.mark.parametrize(
    "escaped",
    [
        json.dumps(TOKEN, ensure_ascii=True).replace("/", "\\/")[1:-1],  # PHP-style escaped slashes
        "".join(f"\\u{ord(c):04x}" for c in TOKEN),  # every character as a \\u escape
    ],
)
def test_json_escapes_do_not_hide_a_value(escaped: str) -> None:
    scrubber = Scrubber([HEADER])
    raw = f'{{"result": {{"text": "{escaped}"}}}}'.encode()
    parsed = json.loads(raw)
    assert parsed["result"]["text"] == TOKEN
    assert scrubber.found_in(raw, parsed)
    assert scrubber.scrub(parsed) == {"result": {"text": REDACTED}}


def test_basic_credentials_are_found_decoded() -> None:
    header = "Basic " + base64.b64encode(b"svc-user:pa55-w0rd-long").decode()
    scrubber = Scrubber([header])
    for text in ("svc-user:pa55-w0rd-long", "pa55-w0rd-long", header):
        raw, parsed = answer(text)
        assert scrubber.found_in(raw, parsed), text
        assert "pa55-w0rd-long" not in json.dumps(scrubber.scrub(parsed))


def test_an_answer_without_the_values_is_left_alone() -> None:
    scrubber = Scrubber([HEADER, "org-northwind-7f3a"])
    raw, parsed = answer("Bearer tokens are described in RFC 6750; ya29 is a prefix; org-northwind")
    assert not scrubber.found_in(raw, parsed)
    assert scrubber.scrub(parsed) == parsed


def test_short_values_are_not_looked_for() -> None:
    """A forwarded `X-Region: eu` must not turn every "eu" of every answer into [REDACTED]."""
    scrubber = Scrubber(["eu", "1234567"])
    assert not scrubber
    raw, parsed = answer("eu 1234567")
    assert not scrubber.found_in(raw, parsed)


def test_a_rotated_token_keeps_the_previous_one_scrubbed_and_no_older() -> None:
    """Answers to requests sent with the previous token may arrive after the rotation; a session living through
    many rotations does not search every answer for all of them."""
    tokens = [f"access-token-{n:04d}-of-a-long-session" for n in range(100)]
    scrubber = Scrubber([tokens[0]])
    for token in tokens[1:]:
        scrubber = scrubber.rotated([token])
    for text in tokens[-2:]:
        raw, parsed = answer(text)
        assert scrubber.found_in(raw, parsed)
        assert text not in json.dumps(scrubber.scrub(parsed))
    raw, parsed = answer(tokens[0])
    assert not scrubber.found_in(raw, parsed)
    assert len(scrubber._raw) == len(Scrubber(tokens[-2:])._raw)

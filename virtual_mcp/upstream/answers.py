"""Parsing a backend's JSON-RPC message: bounded in depth, and with the credentials its request presented removed.

Every message a backend sends (results, errors, notifications relayed while a request runs, the handshake) enters
the gateway through `parse`, so what the request presented upstream never reaches a caller, a log line, an audit
record or a metric label, whichever of them it would have gone to.

Depth: Python's JSON decoder raises RecursionError past about 1,000 levels, and the SDK's serialiser refuses past
about 250; an answer nested deeper than `MAX_ANSWER_DEPTH` is refused before it is decoded, as a protocol error of
that backend, instead of failing somewhere further along as an internal error.
"""

from __future__ import annotations

import json
from typing import Any

from virtual_mcp.outbound.scrubber import Scrubber

MAX_ANSWER_DEPTH = 128

_NO_SECRETS = Scrubber()
_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_FOLD = bytes.maketrans(b"{}", b"[]")


class AnswerTooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"the answer is nested deeper than {MAX_ANSWER_DEPTH} levels (the gateway's limit)")


def nested_deeper(raw: bytes, limit: int = MAX_ANSWER_DEPTH) -> bool:
    """Whether the JSON text `raw` nests arrays and objects more than `limit` deep, without decoding it.

    Costs two byte counts when it has no more brackets than `limit` (most answers). Otherwise the bare structure
    is taken (the brackets outside strings) and its innermost pairs are removed once per level: a few passes over
    a text much shorter than the answer, all at C speed (about a tenth of decoding the answer). Text that is not
    JSON may be let through: the decoder then says what is wrong with it.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b"\\" in raw:
        # Without escaped backslashes and quotes, the quotes left open and close strings in turn.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = raw.translate(_FOLD, _DROP)  # brackets (all of one kind: the decoder checks they match) and quotes
    structure = marks.replace(b'""', b"")
    if b'"' in structure:
        # A string holds a bracket (had none, every string would be an adjacent pair of quotes): keep what lies
        # outside strings, between the 2nd and 3rd quote, the 4th and 5th...
        structure = b"".join(marks.split(b'"')[::2])
    for _ in range(limit):
        inner = structure.replace(b"[]", b"")
        if len(inner) == len(structure):
            return False
        structure = inner
    return b"[]" in structure


def parse(raw: bytes | str, scrubber: Scrubber = _NO_SECRETS) -> Any:
    """The JSON value of `raw`, with every value `scrubber` knows replaced. Raises ValueError for text that is not
    JSON, AnswerTooDeep (a ValueError) for one nested too deep."""
    data = raw.encode() if isinstance(raw, str) else raw
    if nested_deeper(data):
        raise AnswerTooDeep
    try:
        message = json.loads(data)
    except RecursionError:  # unbalanced text that opens more levels than the decoder can follow
        raise AnswerTooDeep from None
    if scrubber.found_in(data, message):
        message = scrubber.scrub(message)
        scrubber.echoes += 1
    return message

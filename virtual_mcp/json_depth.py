"""How deeply a JSON text nests, found without parsing it: `json.loads` recurses once per level and raises
RecursionError (a 500 and a traceback) somewhere past a thousand, so caller-supplied JSON is measured first."""

from __future__ import annotations

import re

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def nests_deeper_than(text: str | bytes, limit: int) -> bool:
    """Whether arrays and objects in `text` nest more than `limit` levels deep (brackets inside strings do not
    count). Linear in the text; free for the common text whose bracket count alone rules it out."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKETS.finditer(_STRING.sub(b"", data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False

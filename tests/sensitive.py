"""Values that must never appear in a gateway log line: every token, JWT, secret and forwarded header value the
tests create is registered here, and tests/conftest.py scans every captured log line of the whole run for them."""

from __future__ import annotations

SENSITIVE: set[str] = set()


def mark(*values: str) -> None:
    SENSITIVE.update(v for v in values if len(v) >= 8)

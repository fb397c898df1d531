"""Values that must never appear in a gateway log line: every token, JWT, secret and forwarded header value the
tests create is registered here, and tests/conftest.py scans every captured log line of the whole run for them."""

from __future__ import annotations

SENSITIVE: set[str] = set()


def mark(*values: str) -> None:
    for value in values:
        # A test that read a credential from an echo gets the gateway's marker now: that is not a credential, and
        # registering it would make every later scan find "leaks" in the gateway's own redactions.
        assert "[REDACTED" not in value, "a redaction marker registered as a sensitive value"
    SENSITIVE.update(v for v in values if len(v) >= 8)

from __future__ import annotations

import io
import logging

import pytest

from virtual_mcp.logs import RedactionFilter, line_handler, redact


@pytest.mark.parametrize(
    "line",
    [
        "upstream said Authorization: Bearer abc.def-ghi_123",
        "token=ya29.a0AfH6SMBxyz retry",
        'payload {"api_key": "sk-live-0123456789"}',
        "jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl here",
        "raw vmcp_0123456789ab_UNylnQpqinAWCKRoC2uzYmOgZ.re76hM6yLjt-zyK58 in a message",
    ],
)
def test_redaction_removes_credentials(line: str) -> None:
    out = redact(line)
    for secret in ("abc.def-ghi_123", "ya29.a0AfH6SMBxyz", "sk-live-0123456789", "c2lnbmF0dXJl", "UNylnQpqin"):
        assert secret not in out


def test_filter_scrubs_formatted_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("virtual_mcp.test")
    caplog.handler.addFilter(RedactionFilter())
    with caplog.at_level(logging.INFO, logger="virtual_mcp.test"):
        logger.info("calling %s with %s", "sentry", "Bearer s3cr3t-token-value")
    assert "s3cr3t-token-value" not in caplog.text
    assert "Bearer [REDACTED]" in caplog.text


def test_control_characters_in_logged_values_are_escaped_not_the_format() -> None:
    """A value a caller chose (a path, a header, a tool name) cannot start a new log line or send a terminal escape
    sequence; the gateway's own format string keeps its line breaks; numbers still format as numbers."""
    out = io.StringIO()
    handler = line_handler(stream=out)
    logger = logging.getLogger("virtual_mcp.test_escape")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("path %s status %d took %.1f ms", "/a\r\nFORGED\x1b[31m\u2028x", 404, 1.25)
        logger.warning("object %r", {"k": "v\nw"})
        logger.warning("mapping %(a)s", {"a": "b\rc"})
        logger.warning("own\nlines %s", "fine")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "path /a\\r\\nFORGED\\x1b[31m\\u2028x status 404 took 1.2 ms" in text
    assert "object {'k': 'v\\nw'}" in text and "mapping b\\rc" in text
    assert "own\nlines fine" in text
    assert not any(line.startswith("FORGED") for line in text.splitlines())


@pytest.mark.parametrize(
    "line",
    [
        "refused POST on /mcp: missing bearer token (Authorization: Bearer ...)",
        "invalid token: signature has expired",
        "Authorization header: expected Bearer scheme",
        "the secret: is not set",
        "basic authentication is not supported",
        "token endpoint refused the request: invalid_client (HTTP 401)",
        "api_key: not configured for this server",
    ],
)
def test_the_gateways_own_words_are_left_alone(line: str) -> None:
    """Redaction removes credential values, not the prose around them (it used to log "missing bearer [REDACTED]")."""
    assert redact(line) == line


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ('{"access_token": "opaque-lowercase-value", "scope": "x"}', "opaque-lowercase-value"),
        ("client_secret=correcthorsebatterystaple&x=1", "correcthorsebatterystaple"),
        ("x-api-key: AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        ("cookie: sid=8f7a6c5d4e3b2a19", "8f7a6c5d4e3b2a19"),
        ("missing bearer token, got Bearer mF_9.B5f-4.1JqM", "mF_9.B5f-4.1JqM"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
    ],
)
def test_credential_values_are_still_redacted(line: str, secret: str) -> None:
    out = redact(line)
    assert secret not in out and "[REDACTED]" in out

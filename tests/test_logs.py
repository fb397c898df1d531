from __future__ import annotations

import logging

import pytest

from virtual_mcp.logs import RedactionFilter, redact


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

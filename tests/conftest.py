from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sensitive import SENSITIVE

# The gateway's own loggers, its upstream HTTP client, the MCP SDK's server side and uvicorn (these two are shared
# with the in-process test backends, whose lines are scanned too). Not scanned: the test clients (mcp.client over
# httpx2), which print the results the `headers` tool echoes on purpose.
CAPTURED: list[_Capture] = []  # the run's capture, so a test can prove the scan is not vacuous
GATEWAY_LOGGERS = ("virtual_mcp", "httpx", "httpcore", "mcp.server", "uvicorn")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> None:
    """Every `async def` test runs under anyio; marked before parametrization so `parametrize` keeps working."""
    if isinstance(collector, pytest.Module | pytest.Class) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Capture(logging.Handler):
    """Collects every gateway log line of the run (see tests/gateway/test_forwarding.py for the proof it works)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line() -> Iterator[None]:
    """Everything the gateway logs during the whole run, at DEBUG, is scanned for registered secrets at the end."""
    capture = _Capture()
    CAPTURED.append(capture)
    previous = {}
    for name in GATEWAY_LOGGERS:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    yield
    for name in GATEWAY_LOGGERS:
        logging.getLogger(name).removeHandler(capture)
        logging.getLogger(name).setLevel(previous[name])
    leaks = [line for line in capture.lines for value in SENSITIVE if value in line]
    assert not leaks, f"{len(leaks)} log line(s) carry a token, secret or forwarded header value: {leaks[:3]}"

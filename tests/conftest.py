from __future__ import annotations

import functools
import inspect
import logging
import ssl
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx._transports.default
import httpx2._transports.default
import pytest

from tests.sensitive import SENSITIVE
from tests.services import Postgres, Redis, postgres_server, redis_server

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


def _one_default_tls_context(transports: ModuleType) -> None:
    """The tests' own clients (fastmcp's and the mcp SDK's over httpx2, raw httpx) are a few thousand short-lived
    clients of loopback HTTP servers, and each built a TLS context, loading the whole CA bundle (~30 ms of CPU, about a
    fifth of the suite), for TLS it never speaks. With default verification they share one, as a long-lived
    application's clients would; any other `verify`/`cert` is built as before. The gateway's own clients need no such
    help: they share `virtual_mcp.tls.client_context()` (tests/test_tls.py)."""
    build = transports.create_ssl_context
    shared = functools.cache(lambda trust_env: build(verify=True, cert=None, trust_env=trust_env))

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is True and cert is None:
            context: ssl.SSLContext = shared(trust_env)
            return context
        return build(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[no-any-return]

    transports.create_ssl_context = create_ssl_context  # type: ignore[attr-defined]


_one_default_tls_context(httpx._transports.default)
_one_default_tls_context(httpx2._transports.default)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server per test process (tests/services.py); each test that needs a clean one makes its own
    database in it."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    """One Redis server per test process (tests/services.py)."""
    with redis_server() as server:
        yield server


class _Capture(logging.Handler):
    """Collects every gateway log line of the run (tests/gateway/service/test_forwarding.py proves it works)."""

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

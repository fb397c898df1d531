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
from tests.store_mode import STORES, TestDatabases, uses_module_fixtures
from virtual_mcp.fleet.connection import REDIS_URL_ENV
from virtual_mcp.vault.engines import DATABASE_URL_ENV

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded_only(why): a test of the embedded SQLite file itself; skipped with --store=postgres"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store",
        choices=STORES,
        default="embedded",
        help="where gateways keep their state: the embedded SQLite file and in-process locks (default), or "
        "PostgreSQL and Redis, as replicas do (tests/store_mode.py)",
    )


@pytest.fixture(scope="session")
def test_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases | None]:
    if request.config.getoption("--store") == "embedded":
        yield None
        return
    databases = TestDatabases(request.getfixturevalue("postgres"), request.getfixturevalue("redis"))
    yield databases
    databases.close()


@pytest.fixture(scope="module", autouse=True)
def module_store(test_databases: TestDatabases | None) -> Iterator[str | None]:
    """On PostgreSQL, the database of a module's own gateways (module-scoped fixtures are made before any test's
    own fixtures), named in the environment while they are made and used; None on the embedded store."""
    if test_databases is None:
        yield None
        return
    url = test_databases.create()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_URL_ENV, url)
        patch.setenv(REDIS_URL_ENV, test_databases.redis_url)
        yield url
    test_databases.drop(url)


@pytest.fixture(autouse=True)
def store(
    request: pytest.FixtureRequest,
    test_databases: TestDatabases | None,
    module_store: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The engine this run keeps the gateway's state in (`--store`). On PostgreSQL: a test that uses its module's
    gateways (a module-scoped fixture) works in the module's database; any other gets a database of its own and a
    flushed Redis, named by the variables serve, every state command and the test gateways read."""
    if test_databases is None:
        yield "embedded"
        return
    embedded_only = request.node.get_closest_marker("embedded_only")
    if embedded_only is not None:
        pytest.skip(f"about the embedded store only: {embedded_only.args[0]}")
    if uses_module_fixtures(request):
        yield "postgres"
        return
    url = test_databases.create()
    test_databases.flush_redis()
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    yield "postgres"
    test_databases.drop(url)


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

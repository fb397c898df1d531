"""The suite's second run, on the shared engines: `pytest --store=postgres` runs every test with the gateway's state
in PostgreSQL and its fleet parts (the refresh lock) in Redis, as replicas run, instead of the embedded SQLite file
and in-process locks.

How: each test gets a database of its own in the worker's PostgreSQL server (created before it, dropped after it)
and a flushed Redis, named by `VIRTUAL_MCP_DATABASE_URL` and `VIRTUAL_MCP_REDIS_URL`, the variables `serve` and
every state command read; the in-process gateways of tests/security_support.py read them the same way. Nothing of
the product is replaced.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import pytest
import redis

from tests.services import Postgres, Redis
from virtual_mcp.vault.engines import database_url, is_remote, open_database
from virtual_mcp.vault.sql import SqlDatabase

T = TypeVar("T")
STORES = ("embedded", "postgres")


class TestDatabases:
    """Creates and drops per-test databases over one admin connection, on a loop of its own (a thread), so a test's
    own event loop is never involved."""

    def __init__(self, server: Postgres, cache: Redis) -> None:
        self._server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-databases", daemon=True)
        self._thread.start()
        self._admin: asyncpg.Connection = self._run(asyncpg.connect(server.url))
        self._redis = redis.Redis.from_url(cache.url)
        self.redis_url = cache.url

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def create(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self._run(self._admin.execute(f'CREATE DATABASE "{name}"'))
        return self._server.url.rsplit("/", 1)[0] + f"/{name}"

    def flush_redis(self) -> None:
        """Nothing of an earlier test left in Redis (a lock a killed process held, say)."""
        self._redis.flushall()

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._run(self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._run(self._admin.close())
        self._redis.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def state_database(data_dir: Path) -> AbstractAsyncContextManager[SqlDatabase]:
    """The database a gateway or command on `data_dir` keeps its state in, in this run (`--store`): what a test
    seeds or inspects beside them."""
    return open_database(data_dir, database_url(None))


def uses_module_fixtures(request: pytest.FixtureRequest) -> bool:
    """Whether the test uses a fixture made once for its module (or class): such a fixture's gateway keeps its state
    in the module's database, so the test must look there too."""
    definitions = request._pyfuncitem._fixtureinfo.name2fixturedefs
    own = {"module_store", "test_databases"}
    return any(
        name not in own and defs[-1].scope in ("module", "class", "package")
        for name, defs in definitions.items()
        if defs
    )


async def refused_after_revocation(status: Callable[[], Awaitable[int]]) -> None:
    """A revoked credential's requests are refused (401): on the embedded store from the very next request; on
    PostgreSQL and Redis within the revocation poll (the `revoked` event clears what each replica verified a moment
    ago at once, but it reaches the replica on its own, after the command that sent it has returned)."""
    if not is_remote(database_url(None)):
        assert await status() == 401
        return
    with anyio.fail_after(2):
        while await status() != 401:  # (asked as fast as it answers, the caller may meet its rate limit meanwhile)
            pass

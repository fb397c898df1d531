"""Which database the gateway's state lives in: the embedded SQLite file in the data directory (the default), or the
database a URL names (`--database-url`, `VIRTUAL_MCP_DATABASE_URL`): `postgresql://...` for replicas that share
their state, `sqlite:DIR` for an embedded database elsewhere than the data directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from virtual_mcp.errors import BadRequest
from virtual_mcp.vault.db import Database
from virtual_mcp.vault.postgres import PostgresDatabase
from virtual_mcp.vault.sql import SqlDatabase

DATABASE_URL_ENV = "VIRTUAL_MCP_DATABASE_URL"
_POSTGRES = ("postgresql://", "postgres://")


def database_url(given: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The URL given on the command line, else the environment's, else None (the data directory's database)."""
    return given or env.get(DATABASE_URL_ENV) or None


def is_remote(url: str | None) -> bool:
    """Whether the database is a server a network round trip away (PostgreSQL), not a file in this process."""
    return url is not None and url.startswith(_POSTGRES)


def check_database_url(url: str | None) -> None:
    """BadRequest naming what is wrong with `url` (never echoing its password)."""
    if url is None or url.startswith(_POSTGRES) or url.startswith("sqlite:"):
        return
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise BadRequest(f"unsupported database URL scheme {scheme!r}: use postgresql://... or sqlite:DIRECTORY")


def open_database(
    data_dir: Path, url: str | None, *, upgrade: bool = False
) -> AbstractAsyncContextManager[SqlDatabase]:
    """The gateway's database, open for as long as the block runs. The embedded database is brought to this
    gateway's schema when opened; a PostgreSQL one only with `upgrade` (`virtual-mcp db upgrade`), else an older
    schema is refused."""
    check_database_url(url)
    if url is None:
        return Database.open(data_dir)
    if url.startswith("sqlite:"):
        return Database.open(sqlite_dir(url))
    return PostgresDatabase.open(url, upgrade=upgrade)


def sqlite_dir(url: str) -> Path:
    """The directory a `sqlite:DIR` URL names (where its gateway.db is)."""
    where = url.removeprefix("sqlite:")
    if not where:
        raise BadRequest("sqlite: needs a directory: sqlite:DIRECTORY (the one holding gateway.db)")
    return Path(where)

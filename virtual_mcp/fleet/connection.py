"""The fleet's Redis connection (`--redis-url`, `VIRTUAL_MCP_REDIS_URL`): one client per gateway process, or none."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url

from virtual_mcp.errors import BadRequest

REDIS_URL_ENV = "VIRTUAL_MCP_REDIS_URL"


def redis_url(given: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The URL given on the command line, else the environment's, else None (no fleet: this process alone)."""
    return given or env.get(REDIS_URL_ENV) or None


def check_redis_url(url: str) -> None:
    """BadRequest naming what is wrong with `url` (never echoing it: it may hold a password)."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        scheme = url.split(":", 1)[0] if ":" in url else "(none)"
        raise BadRequest(f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss:// or unix://")
    try:
        parse_url(url)
    except ValueError as exc:
        raise BadRequest(f"the Redis URL cannot be read: {type(exc).__name__}") from None


@asynccontextmanager
async def fleet_redis(url: str | None) -> AsyncIterator[Redis | None]:
    """A Redis client for `url` for as long as the block runs (None without one). Connecting is lazy: a Redis that
    is down at start is the same degraded fleet as one that goes down later."""
    if url is None:
        yield None
        return
    check_redis_url(url)
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()

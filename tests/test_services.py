"""The real PostgreSQL and Redis the tests start (tests/services.py) answer, each on loopback with its own data
directory, and are gone after."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from tests.services import Postgres, Redis, postgres_server, redis_server


async def test_postgres_answers_and_keeps_what_it_is_given(postgres: Postgres) -> None:
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS probe (k text PRIMARY KEY, v bytea NOT NULL)")
        await conn.execute("INSERT INTO probe VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $2", "k", b"\x00v")
        assert await conn.fetchval("SELECT v FROM probe WHERE k = $1", "k") == b"\x00v"
        assert (await conn.fetchval("SHOW listen_addresses")) == "127.0.0.1"
    finally:
        await conn.close()


async def test_redis_answers_on_loopback(redis: Redis) -> None:
    client = aioredis.from_url(redis.url)
    try:
        assert await client.set("lock:k", "holder", nx=True, px=1000)
        assert not await client.set("lock:k", "other", nx=True, px=1000)
        assert await client.get("lock:k") == b"holder"
    finally:
        await client.aclose()


def test_a_server_stopped_leaves_nothing_behind() -> None:
    with postgres_server() as pg:
        directory = pg.directory
        assert (directory / "data").is_dir()
    assert not directory.exists()
    with redis_server() as server:
        process = server.process
    assert process.poll() is not None

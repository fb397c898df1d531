"""Real PostgreSQL and Redis servers for the tests, from Debian's packages (`scripts/system-packages` installs them):
each started on loopback on a free port with a data directory of its own, and stopped and removed at the end.

PostgreSQL refuses to run as root: where the tests run as root (CI), its processes run as the `postgres` user the
package creates, in a directory that user owns. Neither server writes to disk more than it must (no fsync, no
snapshots): what the tests check is the gateway's behaviour, not the engines' durability.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_ports

_START_DEADLINE = 60.0


def _binary(name: str) -> str:
    """A server binary: on PATH, or where Debian's postgresql package keeps its own (the newest version)."""
    found = shutil.which(name)
    if found:
        return found
    for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    raise RuntimeError(f"{name} not found: install the tests' Debian packages with scripts/system-packages")


@dataclass(frozen=True)
class Postgres:
    url: str  # postgresql://postgres@127.0.0.1:PORT/vmcp
    port: int
    directory: Path


@dataclass(frozen=True)
class Redis:
    url: str  # redis://127.0.0.1:PORT/0
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def postgres_server(database: str = "vmcp") -> Iterator[Postgres]:
    base = Path(tempfile.mkdtemp(prefix="vmcp-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = free_ports(1)[0]

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, check=False, timeout=_START_DEADLINE)  # noqa: S603
        if done.returncode != 0:
            said = (done.stdout + done.stderr).decode(errors="replace")
            log_text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {said}\n{log_text}")

    try:
        run(_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        run(_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        try:
            run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
            yield Postgres(f"postgresql://postgres@127.0.0.1:{port}/{database}", port, base)
        finally:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                run(_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def redis_server(port: int | None = None) -> Iterator[Redis]:
    """A Redis server on `port` (default: a free one), until the block ends."""
    base = Path(tempfile.mkdtemp(prefix="vmcp-redis-"))
    port = port or free_ports(1)[0]
    argv = [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base)]
    argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + _START_DEADLINE
        while not _answers_ping(port):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.02)  # waiting for another process to listen: nothing to wait on but the port
        yield Redis(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def redis_contents(url: str) -> bytes:
    """Everything the Redis at `url` holds, keys and values of every kind, one per line: what a test checks no secret
    is readable in."""
    from redis.asyncio import Redis as RedisClient  # (the services themselves need no client)

    held: list[bytes] = []
    async with RedisClient.from_url(url) as redis:
        async for key in redis.scan_iter():
            held.append(key)
            kind = await redis.type(key)
            if kind == b"string":
                held.append(await redis.get(key) or b"")
            elif kind == b"hash":
                held += [part for pair in (await redis.hgetall(key)).items() for part in pair]
            elif kind == b"zset":
                held += [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
            elif kind == b"set":
                held += list(await redis.smembers(key))
            elif kind == b"list":
                held += await redis.lrange(key, 0, -1)
    return b"\n".join(held)

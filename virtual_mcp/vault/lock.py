"""One serving gateway per data directory.

The token manager's crash safety rests on it: a write-ahead refresh mark left by another process can only be from
a process that died mid-refresh. Other commands (the CLI) may open the database while a gateway serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from virtual_mcp.vault.errors import VaultError

LOCK_FILE_NAME = "serve.lock"


class DataDirInUse(VaultError):
    """Another gateway process is serving from the same data directory."""

    exit_code = 2


@contextlib.contextmanager
def serving(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's serve lock for the life of the block (released by the OS if the process dies)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirInUse(
                f"another virtual-mcp serve (pid {holder}) is using the data directory {data_dir}; "
                "give this one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)

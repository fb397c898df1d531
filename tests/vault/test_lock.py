"""One serving gateway per data directory (the token manager's crash safety relies on it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.support import REPO
from virtual_mcp.vault.lock import DataDirInUse, serving


def test_a_second_server_on_the_same_data_dir_is_refused_with_the_holder(tmp_path: Path) -> None:
    with serving(tmp_path / "data"):
        with pytest.raises(DataDirInUse) as taken, serving(tmp_path / "data"):
            pass
        assert f"pid {os.getpid()}" in taken.value.message and str(tmp_path / "data") in taken.value.message
        with serving(tmp_path / "other"):  # another directory is fine
            pass
    with serving(tmp_path / "data"):  # released with the block
        pass


HOLDER = """
import os, sys
from pathlib import Path
from virtual_mcp.vault.lock import serving
with serving(Path(sys.argv[1])):
    os._exit(0)  # no cleanup: as if killed
"""


async def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    done = await anyio.run_process([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, check=False)
    assert done.returncode == 0
    with serving(tmp_path):  # the OS released it though the child never left its block
        pass

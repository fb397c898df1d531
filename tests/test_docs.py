"""The repository stands alone: what users read never points outside it."""

from __future__ import annotations

import subprocess

from tests.support import REPO


def test_no_project_file_points_at_the_teams_shared_folder() -> None:
    listing = ["git", "ls-files"]  # what a clone holds
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # noqa: S603
    pointing = [
        name
        for name in tracked
        if not name.startswith("tests/") and "../shared/" in (REPO / name).read_text(errors="replace")
    ]
    assert pointing == []

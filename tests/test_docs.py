"""The repository stands alone: what users read never points outside it."""

from __future__ import annotations

import subprocess

from tests.support import REPO
from virtual_mcp.config.settings import Limits


def test_no_project_file_points_at_the_teams_shared_folder() -> None:
    listing = ["git", "ls-files"]  # what a clone holds
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # noqa: S603
    pointing = [
        name
        for name in tracked
        if not name.startswith("tests/") and "../shared/" in (REPO / name).read_text(errors="replace")
    ]
    assert pointing == []


def test_every_limit_is_documented_with_its_default() -> None:
    """The README's table of limits names every key of the gateway document's `limits:` with its default."""
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `") and "limits:" in line]
    for name, field in Limits.model_fields.items():
        assert name in readme, f"limits.{name} is not in the README"
        default = field.default
        shown = f"{default:,}" if isinstance(default, int) and default >= 10_000 else f"{default:g}"
        assert any(f"`{name}`" in row and (shown in row or "MiB" in row) for row in rows), name

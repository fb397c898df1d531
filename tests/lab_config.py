"""The lab's cast and configuration documents, in one place.

Every lab gateway reads a servers.d like an operator's. Who is who (users, teams, virtual accounts) is written
here, once, as YAML built from data (never pasted text), so a test names its people and the document follows.
The server groups stay beside the tests that exercise them: those are what each test is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

ALICE = "alice@northwind.example"
BOB = "bob@northwind.example"
CAROL = "carol@northwind.example"
MALLORY = "mallory@northwind.example"
PLATFORM = "platform"  # the team most lab servers are authorized for
CI = "ci"  # the lab's virtual account


def identities(teams: Mapping[str, Sequence[str]], virtual_accounts: Sequence[str] = ()) -> str:
    """An identities document: each team with its members, and the virtual accounts."""
    document: dict[str, object] = {
        "type": "identities",
        "teams": [{"name": team, "members": list(members)} for team, members in teams.items()],
    }
    if virtual_accounts:
        document["virtual_accounts"] = [{"name": name} for name in virtual_accounts]
    return yaml.safe_dump(document, sort_keys=False)


# The usual cast: alice in the platform team, and the ci virtual account.
NORTHWIND = identities({PLATFORM: [ALICE]}, [CI])


def write_identities(
    config_dir: Path, teams: Mapping[str, Sequence[str]] | None = None, virtual_accounts: Sequence[str] = (CI,)
) -> Path:
    """`config_dir/identities.yaml` (the directory made if missing); without `teams`, the usual cast."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "identities.yaml"
    path.write_text(NORTHWIND if teams is None else identities(teams, virtual_accounts))
    return path

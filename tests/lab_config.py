"""The lab's cast and configuration documents, in one place.

Every lab gateway reads a servers.d like an operator's. Who is who (users, teams, virtual accounts) and the shape
of a server group are written here, once, as YAML built from data (never pasted text): a test names its people and
its servers, with only the fields it is about, and the documents follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def remote(name: str, base_url: str, subjects: Sequence[str] = (f"team:{PLATFORM}",), **fields: Any) -> dict[str, Any]:
    """A remote MCP server entry for the backend served at `base_url` (its endpoint: `/mcp`), authorized for
    `subjects`; `fields` are the rest of the entry as servers.d spells it (auth_data, audit, forwardable_headers...)."""
    entry: dict[str, Any] = {"name": name, "type": "integration/mcp-server/remote", "url": f"{base_url}/mcp"}
    return {**entry, "authorized_subjects": list(subjects), **fields}


def header_auth(**headers: str) -> dict[str, Any]:
    """`auth_data` sending fixed headers (values may be `tfy-secret://` references)."""
    return {"type": "header", "headers": headers}


def group(name: str, *servers: Mapping[str, Any], **fields: Any) -> str:
    """A server group document with `servers` as its integrations (`fields`: the group's others, e.g. collaborators)."""
    document = {"name": name, "type": "provider-account/mcp-server-group", **fields}
    return yaml.safe_dump({**document, "integrations": [dict(s) for s in servers]}, sort_keys=False)

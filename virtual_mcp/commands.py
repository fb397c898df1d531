"""What the CLI's management commands do: tokens and secrets in the gateway's data directory."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TextIO

from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.errors import BadRequest
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import Database, LocalKeyProvider, SecretStore, TokenStore
from virtual_mcp.vault.check import check_master_key
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `45m`, `12h`, `30d` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise BadRequest(f"invalid duration {text!r}: use a positive number with s, m, h or d (e.g. 30d)")
    return float(int(match.group(1)) * _UNIT[match.group(2)])


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


async def token_create(
    data_dir: Path, kind: PrincipalKind, name: str, expires_in: str | None, description: str | None, out: TextIO
) -> None:
    async with Database.open(data_dir) as db:
        info, token = await TokenStore(db).create(
            kind, name, expires_in=parse_duration(expires_in) if expires_in else None, description=description
        )
    print(f"token id: {info.id}", file=sys.stderr)
    print(f"subject:  {info.subject}", file=sys.stderr)
    print(f"expires:  {_when(info.expires_at) if info.expires_at else 'never'}", file=sys.stderr)
    print("This is the only time the token is shown; the gateway keeps only its hash:", file=sys.stderr)
    print(token, file=out)


async def token_list(data_dir: Path, include_revoked: bool, out: TextIO) -> None:
    async with Database.open(data_dir) as db:
        tokens = await TokenStore(db).list(include_revoked=include_revoked)
    now = time.time()
    print(f"{'ID':14} {'SUBJECT':44} {'CREATED':16} {'EXPIRES':16} {'LAST USED':16} STATE", file=out)
    for t in tokens:
        state = "revoked" if t.revoked_at else ("expired" if t.expired(now) else "active")
        print(
            f"{t.id:14} {t.subject:44} {_when(t.created_at):16} {_when(t.expires_at):16} "
            f"{_when(t.last_used_at):16} {state}",
            file=out,
        )


async def token_revoke(data_dir: Path, token_id: str) -> bool:
    async with Database.open(data_dir) as db:
        return await TokenStore(db).revoke(token_id)


async def secret_set(data_dir: Path, reference: str, value: str) -> SecretRef:
    ref = _ref(reference)
    if value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise BadRequest("refusing to store an empty secret (the value is read from standard input)")
    keys = LocalKeyProvider.load(data_dir)
    async with Database.open(data_dir) as db:
        await SecretStore(db, keys).set(ref, value)
    return ref


async def secret_list(data_dir: Path, out: TextIO) -> None:
    keys = LocalKeyProvider.load(data_dir)
    async with Database.open(data_dir) as db:
        for ref in await SecretStore(db, keys).list_refs():
            print(ref.uri, file=out)


async def secret_delete(data_dir: Path, reference: str) -> bool:
    keys = LocalKeyProvider.load(data_dir)
    async with Database.open(data_dir) as db:
        return await SecretStore(db, keys).delete(_ref(reference))


def _ref(reference: str) -> SecretRef:
    text = reference if reference.startswith("tfy-secret://") else f"tfy-secret://{reference}"
    try:
        return SecretRef.parse(text)
    except ValueError:
        raise BadRequest(f"expected TENANT:GROUP:KEY (or tfy-secret://TENANT:GROUP:KEY), got {reference!r}") from None


async def keys_rotate(data_dir: Path) -> tuple[str, int, int]:
    """A new current master key; every stored data key is re-wrapped under it (payloads untouched). A running
    gateway keeps working throughout: it re-reads the key file when it meets the new key id."""
    keys = LocalKeyProvider.load(data_dir, create=False)
    async with Database.open(data_dir) as db:
        await check_master_key(db, keys)
        kid = keys.add_key()
        secrets = await SecretStore(db, keys).rewrap_all()
        tokens = await OAuthTokenStore(db, keys).rewrap_all()
    return kid, secrets, tokens


async def connections_list(data_dir: Path, user: str, out: TextIO) -> None:
    """The servers a user has connected (per-user OAuth tokens held in the vault); never the tokens."""
    async with Database.open(data_dir) as db:
        for server in await OAuthTokenStore(db, LocalKeyProvider.load(data_dir, create=False)).accounts(f"user:{user}"):
            print(server, file=out)


async def connections_disconnect(data_dir: Path, user: str, server: str) -> bool:
    async with Database.open(data_dir) as db:
        store = OAuthTokenStore(db, LocalKeyProvider.load(data_dir, create=False))
        return await store.delete(server, f"user:{user}")

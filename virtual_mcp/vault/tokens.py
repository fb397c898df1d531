"""Gateway tokens `vmcp_<id>_<secret>`: the id finds the row, only sha256(secret) is stored, shown once."""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from virtual_mcp.errors import BadRequest
from virtual_mcp.identity import identity
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.sql import Row, SqlDatabase

TOKEN_PREFIX = "vmcp_"  # noqa: S105 - a prefix, not a token
# The secret is base64 with "-" and "." for "+" and "/": URL- and header-safe, and free of "_", the separator.
_SECRET_ALTCHARS = b"-."
_TOKEN_RE = re.compile(r"vmcp_([0-9a-f]{12})_([A-Za-z0-9.-]{43})")
LAST_USED_RESOLUTION = 60.0  # seconds: verify writes last_used_at at most this often per token

_SELECT = (
    "SELECT id, subject_kind, subject_name, description, created_at, expires_at, revoked_at, last_used_at, secret_hash"
    " FROM tokens"
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    kind: PrincipalKind
    name: str
    description: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    @property
    def subject(self) -> str:
        return f"{self.kind.value}:{self.name}"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def active(self, now: float) -> bool:
        return self.revoked_at is None and not self.expired(now)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _info(row: Row) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        kind=PrincipalKind(row["subject_kind"]),
        name=row["subject_name"],
        description=row["description"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


class TokenStore:
    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        kind: PrincipalKind,
        name: str,
        *,
        expires_in: float | None = None,
        description: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """Issue a token; the returned plaintext is the only copy there will ever be. `name` is stored in canonical
        form (InvalidIdentity if it cannot be one), so `revoke --user` finds it however it was written."""
        kind = PrincipalKind(kind)
        name = identity(name, "user" if kind is PrincipalKind.USER else "virtual account")
        if expires_in is not None and expires_in <= 0:
            raise BadRequest("expires_in must be positive")
        token_id = secrets.token_hex(6)
        secret = base64.b64encode(secrets.token_bytes(32), altchars=_SECRET_ALTCHARS).decode("ascii").rstrip("=")
        now = self._clock()
        expires_at = now + expires_in if expires_in is not None else None
        info = TokenInfo(token_id, kind, name, description, now, expires_at, None, None)
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO tokens (id, subject_kind, subject_name, description, created_at, expires_at, secret_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, info.kind.value, name, description, now, expires_at, _hash(secret)),
            )
        return info, f"{TOKEN_PREFIX}{token_id}_{secret}"

    async def verify(self, token: str) -> TokenInfo | None:
        """The token's info if it is well formed, known, matches, and is neither revoked nor expired; else None."""
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            return None
        token_id, secret = m.group(1), m.group(2)
        row = await self._db.lookup(_SELECT + " WHERE id = ?", (token_id,))  # every request: as cheap as can be
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), _hash(secret)):
            return None
        info = _info(row)
        now = self._clock()
        if not info.active(now):
            return None
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
            async with self._db.transaction() as tx:
                await tx.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
            info = replace(info, last_used_at=now)
        return info

    async def get(self, token_id: str) -> TokenInfo | None:
        row = await self._db.fetchone(_SELECT + " WHERE id = ?", (token_id,))
        return _info(row) if row is not None else None

    async def list(self, include_revoked: bool = False) -> builtins.list[TokenInfo]:
        """Every token, oldest first; expired ones included (check `.active(now)`), revoked ones only on request."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._db.fetchall(_SELECT + where + " ORDER BY created_at, id")
        return [_info(r) for r in rows]

    async def revoke(self, token_id: str) -> bool:
        """True if the token existed and was not already revoked."""
        async with self._db.transaction() as tx:
            n = await tx.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._clock(), token_id)
            )
        return n > 0

    async def revoke_subject(self, kind: PrincipalKind, name: str) -> int:
        """Revoke every live token of one subject (`name` in any case: it is compared in canonical form); returns how
        many were revoked."""
        async with self._db.transaction() as tx:
            return await tx.execute(
                "UPDATE tokens SET revoked_at = ? WHERE subject_kind = ? AND subject_name = ? AND revoked_at IS NULL",
                (self._clock(), PrincipalKind(kind).value, identity(name)),
            )

    async def count_subject(self, kind: PrincipalKind, name: str) -> int:
        """How many tokens one subject has, in any state (revoked and expired ones included)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM tokens WHERE subject_kind = ? AND subject_name = ?",
            (PrincipalKind(kind).value, identity(name)),
        )
        return int(row[0]) if row is not None else 0

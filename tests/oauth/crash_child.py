"""`virtual-mcp serve` that kills itself (SIGKILL: no cleanup, no flush) at one point of storing a refreshed token.

Run as `python -m tests.oauth.crash_child POINT CLOCK_OFFSET serve ARGS...`. CLOCK_OFFSET (seconds) moves the token
manager's clock forward, so the test need not wait for tokens to age. The points (`none`: no crash), all while
the new token pair of a refresh is being stored:
- `received`: the provider's answer is in memory, nothing of it written yet;
- `in_transaction`: the row is written inside the open transaction, not committed (SQLite or PostgreSQL);
- `committed`: the transaction is committed.
Earlier writes (the consent's first token set, the write-ahead mark) go through untouched.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from tests.serve_child import announce_ready
from virtual_mcp.cli import main
from virtual_mcp.outbound.token_manager import TokenManager
from virtual_mcp.vault import db, postgres
from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

POINTS = ("received", "in_transaction", "committed")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point not in POINTS:
        raise SystemExit(f"unknown crash point {point!r}; one of {POINTS}")
    put = OAuthTokenStore.put
    execute = db.Transaction.execute
    pg_execute = postgres.PgTransaction.execute
    writing_new_pair = False

    async def crashing_put(
        self: OAuthTokenStore, server: str, account: str, record: dict[str, Any], *, expect: int | None = None
    ) -> int | None:
        nonlocal writing_new_pair
        stored = await self.get(server, account)
        # The new pair of a refresh replaces a set this process marked before sending its refresh token.
        if record.get("refreshing_by") is None and stored is not None and stored.get("refreshing_by") is not None:
            if point == "received":
                _die()
            writing_new_pair = True
        version = await put(self, server, account, record, expect=expect)
        if writing_new_pair and point == "committed":
            _die()
        return version

    async def crashing_execute(self: db.Transaction, sql: str, params: db.Params = ()) -> int:
        changed = await execute(self, sql, params)
        if writing_new_pair and point == "in_transaction" and "oauth_tokens" in sql:
            _die()
        return changed

    async def crashing_pg_execute(self: postgres.PgTransaction, sql: str, params: db.Params = ()) -> int:
        changed = await pg_execute(self, sql, params)
        if writing_new_pair and point == "in_transaction" and "oauth_tokens" in sql:
            _die()
        return changed

    OAuthTokenStore.put = crashing_put  # type: ignore[method-assign]
    db.Transaction.execute = crashing_execute  # type: ignore[method-assign]
    postgres.PgTransaction.execute = crashing_pg_execute  # type: ignore[method-assign]


def offset_clock(seconds: float) -> None:
    """The token manager sees time `seconds` ahead (its clock is a constructor argument, defaulting to time.time)."""
    init = TokenManager.__init__

    def init_with_clock(self: TokenManager, *args: Any, **kwargs: Any) -> None:
        clock = kwargs.get("clock", time.time)  # the one `serve` passes in, moved forward
        kwargs["clock"] = lambda: clock() + seconds
        init(self, *args, **kwargs)

    TokenManager.__init__ = init_with_clock  # type: ignore[method-assign]


if __name__ == "__main__":
    if sys.argv[1] != "none":
        arm(sys.argv[1])
    offset_clock(float(sys.argv[2]))
    announce_ready()
    sys.exit(main(sys.argv[3:]))

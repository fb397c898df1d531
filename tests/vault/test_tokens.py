from __future__ import annotations

from pathlib import Path

import pytest

from virtual_mcp.errors import BadRequest
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import Database, TokenStore

USER, VA = PrincipalKind.USER, PrincipalKind.VIRTUAL_ACCOUNT


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_create_verify_and_format(tmp_path: Path) -> None:
    clock = Clock()
    async with Database.open(tmp_path) as db:
        store = TokenStore(db, clock=clock)
        info, token = await store.create(USER, "alice@x", description="laptop")
        prefix, token_id, secret = token.split("_")
        assert prefix == "vmcp" and token_id == info.id and len(token_id) == 12 and len(secret) == 43
        assert (info.kind, info.name, info.description, info.created_at) == (USER, "alice@x", "laptop", clock.now)
        verified = await store.verify(token)
        assert verified is not None and verified.subject == "user:alice@x" and verified.last_used_at == clock.now
        row = await db.fetchone("SELECT secret_hash FROM tokens WHERE id = ?", (info.id,))
        assert row is not None and secret.encode() not in bytes(row[0])


async def test_last_used_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    async with Database.open(tmp_path) as db:
        store = TokenStore(db, clock=clock)
        info, token = await store.create(VA, "ci")
        t0 = clock.now
        await store.verify(token)
        clock.now += 30
        assert (await store.verify(token)) is not None
        assert (await store.get(info.id)) is not None
        assert (got := await store.get(info.id)) is not None and got.last_used_at == t0
        clock.now += 31
        await store.verify(token)
        assert (got := await store.get(info.id)) is not None and got.last_used_at == clock.now


async def test_expiry_with_injected_clock(tmp_path: Path) -> None:
    clock = Clock()
    async with Database.open(tmp_path) as db:
        store = TokenStore(db, clock=clock)
        info, token = await store.create(VA, "ci", expires_in=3600)
        assert info.expires_at == clock.now + 3600
        clock.now += 3599
        assert await store.verify(token) is not None
        clock.now += 1
        assert await store.verify(token) is None
        listed = await store.list()
        assert [t.id for t in listed] == [info.id] and listed[0].expired(clock.now) and not listed[0].active(clock.now)
        with pytest.raises(BadRequest):
            await store.create(VA, "ci", expires_in=0)
        with pytest.raises(BadRequest):
            await store.create(VA, "")


async def test_revoke_list_and_revoke_subject(tmp_path: Path) -> None:
    clock = Clock()
    async with Database.open(tmp_path) as db:
        store = TokenStore(db, clock=clock)
        a1, t1 = await store.create(USER, "alice@x")
        clock.now += 1
        a2, t2 = await store.create(USER, "alice@x")
        clock.now += 1
        ci, t3 = await store.create(VA, "alice@x")  # same name, other kind: not alice the user
        assert await store.revoke(a1.id) is True
        assert await store.revoke(a1.id) is False
        assert await store.revoke("000000000000") is False
        assert await store.verify(t1) is None and await store.verify(t2) is not None
        assert [t.id for t in await store.list()] == [a2.id, ci.id]
        everything = await store.list(include_revoked=True)
        assert [t.id for t in everything] == [a1.id, a2.id, ci.id] and everything[0].revoked_at == clock.now
        assert await store.revoke_subject(USER, "alice@x") == 1
        assert await store.verify(t2) is None and await store.verify(t3) is not None
        assert await store.revoke_subject(USER, "alice@x") == 0


async def test_malformed_and_wrong_tokens_give_none(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as db:
        store = TokenStore(db)
        info, token = await store.create(USER, "alice@x")
        _, token_id, secret = token.split("_")
        other_secret = (await store.create(USER, "bob@x"))[1].split("_")[2]
        candidates = [
            "",
            "vmcp_",
            "Bearer " + token,
            token.replace("vmcp_", "vmpc_", 1),
            token.replace("vmcp_", "VMCP_", 1),
            f"vmcp_{token_id}_{secret}_extra",
            f"vmcp__{token_id}_{secret}",
            f"vmcp_{token_id}__{secret}",
            f"vmcp_{token_id}_{secret[:-1]}",
            f"vmcp_{token_id}_{secret}=",
            token + "\n",
            f"vmcp_{'0' * 12}_{secret}",  # unknown id
            f"vmcp_{token_id}_{other_secret}",  # right id, wrong secret
            f"vmcp_{token_id.upper()}_{secret}",
        ]
        for candidate in candidates:
            if candidate == token:  # an all-digit id upper-cases to itself
                continue
            assert await store.verify(candidate) is None, candidate
        assert await store.verify(token) == await store.get(info.id)


async def test_server_sees_tokens_created_and_revoked_by_the_cli(tmp_path: Path) -> None:
    async with Database.open(tmp_path) as cli_db, Database.open(tmp_path) as server_db:
        cli, server = TokenStore(cli_db), TokenStore(server_db)
        info, token = await cli.create(VA, "ci")
        assert (await server.verify(token)) is not None
        await cli.revoke(info.id)
        assert await server.verify(token) is None

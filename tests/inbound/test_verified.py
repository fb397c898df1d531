"""Gateway tokens verified a moment ago (virtual_mcp/inbound/verified.py), over the real token store: answered from
memory only within the ttl, never past the token's expiry, never for another secret, and not at all once the fleet
says something was revoked."""

from __future__ import annotations

from pathlib import Path

import anyio

from tests.store_mode import state_database
from virtual_mcp.inbound.verified import RecentlyVerified
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault.tokens import TokenInfo, TokenStore


class Counting(TokenStore):
    asked = 0

    async def verify(self, token: str) -> TokenInfo | None:
        self.asked += 1
        return await super().verify(token)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_answered_from_memory_within_the_ttl_only(tmp_path: Path) -> None:
    async with state_database(tmp_path) as db:
        store = Counting(db)
        _, token = await store.create(PrincipalKind.USER, "alice@x.example")
        monotonic = Clock(100.0)
        verified = RecentlyVerified(store, ttl=1.0, monotonic=monotonic)
        first = await verified.verify(token)
        assert first is not None and first.name == "alice@x.example"
        monotonic.now += 0.9
        assert await verified.verify(token) == first and store.asked == 1
        monotonic.now += 0.2  # past the ttl: the store is asked, and says it is revoked
        await store.revoke(first.id)
        assert await verified.verify(token) is None and store.asked == 2
        assert await verified.verify(token) is None and store.asked == 3  # a refusal is never remembered


async def test_forget_drops_every_token_at_once(tmp_path: Path) -> None:
    async with state_database(tmp_path) as db:
        store = Counting(db)
        _, token = await store.create(PrincipalKind.USER, "alice@x.example")
        verified = RecentlyVerified(store, ttl=3600)
        info = await verified.verify(token)
        assert info is not None
        await store.revoke(info.id)
        assert await verified.verify(token) == info  # (within the ttl, until told)
        verified.forget()  # a `revoked` event
        assert await verified.verify(token) is None


async def test_never_past_expiry_nor_for_another_secret(tmp_path: Path) -> None:
    async with state_database(tmp_path) as db:
        wall = Clock(1_000_000.0)
        store = Counting(db, clock=wall)
        _, token = await store.create(PrincipalKind.USER, "alice@x.example", expires_in=60)
        verified = RecentlyVerified(store, ttl=3600, clock=wall)
        assert await verified.verify(token) is not None
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")  # same id, another secret
        assert await verified.verify(forged) is None
        wall.now += 61
        assert await verified.verify(token) is None


async def test_at_most_max_entries_are_kept(tmp_path: Path) -> None:
    async with state_database(tmp_path) as db:
        store = Counting(db)
        tokens = [(await store.create(PrincipalKind.USER, f"u{i}@x.example"))[1] for i in range(3)]
        verified = RecentlyVerified(store, ttl=3600, max_entries=2)
        for token in tokens:
            await verified.verify(token)
        asked = store.asked
        await verified.verify(tokens[2])
        await verified.verify(tokens[1])
        assert store.asked == asked  # the two most recent are held
        await verified.verify(tokens[0])
        assert store.asked == asked + 1  # the oldest was let go


class Gated(TokenStore):
    """A store whose answer waits until the test lets it go: a lookup in flight while something is revoked."""

    gate: anyio.Event | None = None
    entered = None

    async def verify(self, token: str) -> TokenInfo | None:
        answer = await super().verify(token)
        if self.gate is not None:
            assert self.entered is not None
            self.entered.set()
            await self.gate.wait()
        return answer


async def test_an_answer_read_before_a_revocation_is_not_kept(tmp_path: Path) -> None:
    """The store said "good" just before the token was revoked, and the revocation's event (forget) came while that
    answer was on its way: it serves the request that asked, but is not kept for the next one."""
    async with state_database(tmp_path) as db:
        store = Gated(db)
        info, token = await store.create(PrincipalKind.USER, "alice@x.example")
        verified = RecentlyVerified(store, ttl=3600)
        store.gate, store.entered = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(verified.verify, token)
            with anyio.fail_after(5):
                await store.entered.wait()
            await store.revoke(info.id)
            verified.forget()
            store.gate.set()
        store.gate = None
        assert await verified.verify(token) is None

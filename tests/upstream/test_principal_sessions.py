"""Whose backend session serves a call: two principals against one stateful backend, end to end through the gateway
with real clients. A 2025-11-25 backend session belongs to one principal (and one credential) unless the server is
configured `upstream_session: shared`; sessions are bounded per principal and in all, and one principal's churn
never closes another's session."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client
from fastmcp.client.logging import LogMessage
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError
from mcp_types import TextResourceContents

from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import SecureGateway, secure_gateway
from tests.stateful_backend import Seen, stateful_app
from tests.support import serve
from virtual_mcp.config.settings import Limits
from virtual_mcp.types import Principal, PrincipalKind

ALICE, BOB, CAROL = "alice@northwind.example", "bob@northwind.example", "carol@northwind.example"


def group_doc(legacy: str, modern: str) -> str:
    return group(
        "lab",
        remote("private", legacy, forwardable_headers=["X-Org"]),
        remote("shared", legacy, upstream_session="shared"),
        remote("modern", modern),
    )


@dataclass
class Lab:
    gw: SecureGateway
    seen: Seen  # the 2025-11-25 backend
    modern_seen: Seen
    tokens: dict[str, str]

    def client(self, user: str, server: str = "private", org: str | None = None, **options: Any) -> Client[Any]:
        headers = {"x-tfy-mcp-headers": json.dumps({"lab/private": {"X-Org": org}})} if org is not None else {}
        url = f"{self.gw.url}/mcp-server/lab/{server}/server"
        return Client(StreamableHttpTransport(url, headers=headers, auth=self.tokens[user]), **options)

    async def call(self, user: str, tool: str, server: str = "private", org: str | None = None, **args: Any) -> str:
        async with self.client(user, server, org, mode=options_mode(user)) as client:
            result = await client.call_tool(tool, args)
        return str(result.data)

    def sessions_of(self, user: str) -> int:
        return self.gw.runtime.pool.owned_by(Principal(user, PrincipalKind.USER))


def options_mode(user: str) -> str:
    """Alice's client speaks 2025-11-25 and Bob's 2026-07-28: whose backend session serves them does not depend on
    the era of their own connection to the gateway."""
    return "legacy" if user == ALICE else "auto"


@asynccontextmanager
async def lab(tmp_path: Path, **settings: Any) -> AsyncIterator[Lab]:
    seen, modern_seen = Seen(), Seen()
    async with serve(stateful_app(seen)) as legacy, serve(stateful_app(modern_seen, legacy=False)) as modern:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(legacy=legacy.url, modern=modern.url))
        write_identities(config, {PLATFORM: [ALICE, BOB, CAROL]})
        async with secure_gateway(config, tmp_path / "data", **settings) as gw:
            tokens = {user: await gw.token(PrincipalKind.USER, user) for user in (ALICE, BOB, CAROL)}
            try:
                yield Lab(gw, seen, modern_seen, tokens)
            finally:
                seen.release.set()


async def test_one_principal_never_sees_state_another_left_in_a_backend_session(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        assert await t.call(ALICE, "remember", value="alice's note") == "remembered"
        assert await t.call(BOB, "recall") == "nothing"
        # Alice's state is hers across her connections to the gateway: her session is per principal, not per client.
        assert await t.call(ALICE, "recall") == "alice's note"
        assert await t.call(BOB, "remember", value="bob's note") == "remembered"
        assert await t.call(ALICE, "recall") == "alice's note"
        assert await t.call(BOB, "recall") == "bob's note"
        # The same for a session resource.
        for user, note in ((ALICE, "alice's note"), (BOB, "bob's note")):
            async with t.client(user, mode=options_mode(user)) as client:
                contents = await client.read_resource("note://current")
            assert isinstance(contents[0], TextResourceContents) and contents[0].text == note
        assert t.sessions_of(ALICE) == t.sessions_of(BOB) == 1


async def test_a_shared_server_shares_its_backend_session_by_the_operators_choice(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        assert await t.call(ALICE, "remember", server="shared", value="alice's note") == "remembered"
        # `upstream_session: shared` is documented for backends that keep no session state: this one does, and the
        # operator's choice is what makes Alice's note visible to Bob.
        assert await t.call(BOB, "recall", server="shared") == "alice's note"
        assert t.sessions_of(ALICE) == t.sessions_of(BOB) == 0  # the server's own session serves both


async def test_a_2026_backend_is_sessionless_so_no_state_is_kept_to_leak(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        assert await t.call(ALICE, "remember", server="modern", value="alice's note") == "remembered"
        assert await t.call(ALICE, "recall", server="modern") == "nothing"
        assert await t.call(BOB, "recall", server="modern") == "nothing"
        assert t.modern_seen.sessions == set()  # no session id was ever sent to it
        assert t.modern_seen.cookies == []


async def test_one_callers_log_level_does_not_filter_anothers_log_messages(tmp_path: Path) -> None:
    async with lab(tmp_path) as t:
        received: dict[str, list[str]] = {ALICE: [], BOB: []}

        def handler(user: str) -> Any:
            async def on_log(message: LogMessage) -> None:
                received[user].append(message.level)

            return on_log

        async with (
            t.client(ALICE, log_handler=handler(ALICE), mode="legacy") as alice,
            t.client(BOB, log_handler=handler(BOB), mode="legacy") as bob,
        ):
            await alice.set_logging_level("error")
            await alice.call_tool("chatty", {})
            await bob.call_tool("chatty", {})
        assert received[ALICE] == []
        assert received[BOB] == ["debug", "info", "warning"]


async def test_one_principals_churn_never_closes_another_principals_session(tmp_path: Path) -> None:
    async with lab(tmp_path, limits=Limits(upstream_sessions_per_principal=2, max_upstream_sessions=3)) as t:
        assert await t.call(BOB, "remember", value="bob's note") == "remembered"
        # Each distinct x-tfy-mcp-headers value is a credential of its own, so a backend session of its own: Alice's
        # count against her quota, and past it she loses her own least recently used session.
        for org in range(8):
            assert await t.call(ALICE, "remember", org=f"org-{org}", value=f"note {org}") == "remembered"
            assert t.sessions_of(ALICE) <= 2
        assert await t.call(ALICE, "recall", org="org-7") == "note 7"
        assert await t.call(BOB, "recall") == "bob's note"
        assert len(t.seen.deleted) == 6 and t.gw.runtime.pool.open_sessions <= 3 + 1  # + the server's own
        # At the total cap a newcomer takes a session from whoever holds the most (Alice), never from Bob.
        assert await t.call(CAROL, "recall") == "nothing"
        assert t.sessions_of(CAROL) == 1 and t.sessions_of(ALICE) == 1
        assert await t.call(BOB, "recall") == "bob's note"


async def test_a_session_with_a_call_in_flight_is_never_closed(tmp_path: Path) -> None:
    async with lab(tmp_path, limits=Limits(upstream_sessions_per_principal=2)) as t:
        results: list[str] = []

        async def wait(org: str | None) -> None:
            results.append(await t.call(ALICE, "wait", org=org))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, None)
            await t.seen.until(lambda: t.seen.waiting == 1)
            assert await t.call(ALICE, "recall", org="a") == "nothing"  # her second session: the quota is full
            tg.start_soon(wait, "b")  # room is made by closing the idle one ("a"), not the busy one
            await t.seen.until(lambda: t.seen.waiting == 2 and len(t.seen.deleted) == 1)
            with pytest.raises(MCPError) as full:
                await t.call(ALICE, "recall", org="c")
            assert full.value.code == -32010
            assert full.value.message == (
                "backend 'lab/private': you hold 2 backend sessions (limits.upstream_sessions_per_principal), each "
                "busy (a call in flight, or a task it holds); retry when one ends"
            )
            assert await t.call(BOB, "recall") == "nothing"  # everyone else is served meanwhile
            t.seen.release.set()
        assert results == ["released", "released"]
        assert len(t.seen.deleted) == 1


async def test_a_session_holding_a_task_is_neither_evicted_nor_idle_closed(tmp_path: Path) -> None:
    """A backend session that holds a caller's task (pinned until the task expires) stays open: idle past its time,
    and when its principal needs room for another."""
    async with lab(tmp_path, limits=Limits(upstream_sessions_per_principal=1, upstream_session_idle_seconds=0.2)) as t:
        assert await t.call(ALICE, "remember", value="a task's state") == "remembered"
        [held] = [s for key, s in t.gw.runtime.pool._sessions.items() if key[1] is not None]
        held.pin(time.monotonic() + 60)
        with pytest.raises(MCPError) as full:
            await t.call(ALICE, "recall", org="other")  # a second credential: needs her only slot
        assert full.value.code == -32010 and "a task it holds" in full.value.message
        await t.call(BOB, "remember", value="bob's")  # Bob's session is closed when idle; Alice's is not
        await t.seen.until(lambda: len(t.seen.deleted) == 1)
        assert not held.closed and await t.call(ALICE, "recall") == "a task's state"


async def test_idle_sessions_are_closed_and_reopened_on_demand(tmp_path: Path) -> None:
    async with lab(tmp_path, limits=Limits(upstream_session_idle_seconds=0.2)) as t:
        assert await t.call(ALICE, "remember", value="short-lived") == "remembered"
        await t.seen.until(lambda: len(t.seen.deleted) == 1)
        assert t.sessions_of(ALICE) == 0
        # A new backend session: what the old one held is gone with it, as the backend ended it.
        assert await t.call(ALICE, "recall") == "nothing"

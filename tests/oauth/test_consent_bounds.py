"""Pending consent tickets and flows are bounded per user: no user can evict another's link (the table used to be
one global first-in-first-out of 10,000, which any user could fill)."""

from __future__ import annotations

import time

import pytest

from virtual_mcp.outbound.consent import (
    MAX_PENDING,
    TICKET_SECONDS,
    TICKETS_PER_USER,
    ConsentFlows,
    ConsentLinkInvalid,
    ConsentStateInvalid,
    FormNotFromThisBrowser,
    NotTheLinksAccount,
    NotTheSigningInBrowser,
    new_browser_value,
)
from virtual_mcp.outbound.pending import LocalPending, PendingTable
from virtual_mcp.types import Principal, PrincipalKind, ServerRef

GITHUB = ServerRef("g", "github")
ALICE = Principal("alice@x.example", PrincipalKind.USER)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def begin(flows: ConsentFlows, ticket: str, browser: str, who: Principal = ALICE) -> str:
    return await flows.begin(
        ticket, browser, who, "https://idp.example/authorize", "client", (), "https://be", "https://gw/cb"
    )


async def test_one_user_asking_for_a_link_to_every_server_does_not_evict_another_users_link() -> None:
    flows = ConsentFlows()
    alices = await flows.ticket(ALICE.name, GITHUB)
    for i in range(MAX_PENDING + 10):
        await flows.ticket("mallory@x.example", ServerRef("g", f"s{i}"))
    assert (await flows.pending(alices)).user == ALICE.name
    assert flows._tickets.count("mallory@x.example") == TICKETS_PER_USER  # only their own oldest went


def test_past_the_global_bound_the_largest_holder_loses_its_oldest_not_the_oldest_overall() -> None:
    table: PendingTable[int] = PendingTable(per_owner=5, total=10, clock=Clock())
    table.put("a1", "alice", 1, 60)
    for i in range(5):
        table.put(f"m{i}", "mallory", i, 60)
    for i in range(4):
        table.put(f"u{i}", f"user{i}", i, 60)
    assert len(table) == 10
    table.put("n", "newcomer", 0, 60)  # full: mallory (5) holds the most and loses m0
    assert table.get("a1") == 1 and table.get("m0") is None and table.get("m1") == 1 and len(table) == 10
    table.put("m5", "mallory", 5, 60)  # mallory is still the largest holder: loses its own oldest again
    assert table.get("a1") == 1 and table.get("m1") is None and table.get("n") == 0


def test_a_tie_evicts_the_owner_whose_entries_are_oldest() -> None:
    table: PendingTable[int] = PendingTable(per_owner=2, total=4, clock=Clock())
    for key, owner in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")):
        table.put(key, owner, 0, 60)
    table.put("c1", "c", 0, 60)
    assert table.get("a1") is None and [table.get(k) for k in ("a2", "b1", "b2", "c1")] == [0, 0, 0, 0]


def test_the_bounds_must_make_sense() -> None:
    with pytest.raises(ValueError, match="per_owner"):
        PendingTable(per_owner=0, total=1, clock=Clock())
    with pytest.raises(ValueError, match="per_owner"):
        PendingTable(per_owner=3, total=2, clock=Clock())


async def test_asking_again_renews_the_same_ticket_and_it_still_expires() -> None:
    clock = Clock()
    flows = ConsentFlows(clock)
    first = await flows.ticket(ALICE.name, GITHUB)
    clock.now += TICKET_SECONDS - 1
    assert await flows.ticket(ALICE.name, GITHUB) == first  # renewed: alive for another TICKET_SECONDS
    clock.now += TICKET_SECONDS - 1
    assert (await flows.pending(first)).server == GITHUB
    clock.now += 2
    with pytest.raises(ConsentLinkInvalid):
        await flows.pending(first)
    assert await flows.ticket(ALICE.name, GITHUB) != first
    assert await flows.ticket(ALICE.name, ServerRef("g", "other")) != first


async def test_flows_are_bounded_per_user_too() -> None:
    flows = ConsentFlows(flows_per_user=2)
    browser = new_browser_value()
    states = []
    for _ in range(3):
        url = await begin(flows, await flows.ticket(ALICE.name, GITHUB), browser)
        states.append(url.split("state=", 1)[1].split("&", 1)[0])
    bobs = await begin(
        flows, await flows.ticket("bob@x.example", GITHUB), browser, Principal("bob@x.example", PrincipalKind.USER)
    )
    with pytest.raises(ConsentStateInvalid):
        await flows.finish(states[0], browser, "code")  # alice's own oldest went
    assert (await flows.finish(states[2], browser, "code")).user == ALICE.name
    assert bobs


async def test_a_virtual_account_of_the_same_name_is_not_the_user() -> None:
    flows = ConsentFlows()
    ticket = await flows.ticket("ci", GITHUB)
    with pytest.raises(NotTheLinksAccount):
        await flows.claim(ticket, Principal("ci", PrincipalKind.VIRTUAL_ACCOUNT))
    with pytest.raises(ConsentLinkInvalid):  # and the link is spent
        await flows.pending(ticket)


async def test_a_flow_finished_in_another_browser_is_spent() -> None:
    flows = ConsentFlows()
    url = await begin(flows, await flows.ticket(ALICE.name, GITHUB), new_browser_value())
    state = url.split("state=", 1)[1].split("&", 1)[0]
    with pytest.raises(NotTheSigningInBrowser):
        await flows.finish(state, new_browser_value(), "code")
    with pytest.raises(ConsentStateInvalid):
        await flows.finish(state, None, "code")


async def test_replicas_rolling_out_a_new_master_key_accept_each_others_forms_and_flows() -> None:
    """Two replicas over one set of tables (the fleet's), one with the new master key first: a form one showed is
    accepted by the other, and a flow one began is finished by the other. Another fleet's key is refused."""
    tickets, pending = LocalPending(TICKETS_PER_USER, MAX_PENDING, time.monotonic), LocalPending(8, 100, time.monotonic)
    before = ConsentFlows(tickets=tickets, flows=pending, keys=[b"o" * 32])
    after = ConsentFlows(tickets=tickets, flows=pending, keys=[b"n" * 32, b"o" * 32])
    stranger = ConsentFlows(tickets=tickets, flows=pending, keys=[b"x" * 32])
    ticket, browser = await before.ticket(ALICE.name, GITHUB), new_browser_value()
    assert (await after.check_form(ticket, browser, before.csrf(ticket, browser))).user == ALICE.name
    with pytest.raises(FormNotFromThisBrowser):
        await stranger.check_form(ticket, browser, before.csrf(ticket, browser))
    state = (await begin(before, ticket, browser)).split("state=", 1)[1].split("&", 1)[0]
    assert (await after.finish(state, browser, "code")).user == ALICE.name

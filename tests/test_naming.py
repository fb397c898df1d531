from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from virtual_mcp.naming import namespaced

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
segment = st.from_regex(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*", fullmatch=True).filter(lambda s: len(s) <= 40)


def test_plain_names_are_readable() -> None:
    assert namespaced(("backend-group", "sentry"), "list_issues", 48) == "backend-group__sentry__list_issues"


def test_unsafe_characters_are_replaced_and_disambiguated() -> None:
    dotted = namespaced(("g", "s"), "files.read", 48)
    slashed = namespaced(("g", "s"), "files/read", 48)
    assert SAFE.match(dotted) and SAFE.match(slashed)
    assert dotted.startswith("g__s__files_read_") and dotted != slashed
    assert namespaced(("g", "s"), "files_read", 48) == "g__s__files_read"


def test_long_names_are_shortened_deterministically() -> None:
    long_tool = "summarize_every_open_incident_for_the_last_quarter"
    name = namespaced(("platform-engineering", "incident-io"), long_tool, 48)
    assert len(name) <= 48 and SAFE.match(name)
    assert name == namespaced(("platform-engineering", "incident-io"), long_tool, 48)
    other = namespaced(("platform-engineering", "incident-io"), long_tool + "s", 48)
    assert other != name


@given(st.lists(segment, min_size=1, max_size=3), st.text(min_size=1, max_size=90), st.integers(24, 64))
def test_names_are_always_safe_and_within_budget(prefix: list[str], tool: str, budget: int) -> None:
    name = namespaced(tuple(prefix), tool, budget)
    assert SAFE.match(name)
    assert len(name) <= budget


@given(st.lists(st.text(min_size=1, max_size=70), min_size=2, max_size=30, unique=True))
def test_distinct_tools_get_distinct_names(tools: list[str]) -> None:
    names = {namespaced(("group", "server"), t, 48) for t in tools}
    assert len(names) == len(tools)


@given(st.text(min_size=1, max_size=60), st.lists(segment, min_size=1, max_size=5))
def test_name_depends_only_on_its_own_identity(tool: str, others: list[str]) -> None:
    # Stability: nothing about other backends enters the computation, so adding or removing them cannot move it.
    before = namespaced(("g", "s"), tool, 48)
    for other in others:
        namespaced(("g", other), tool, 48)
    assert namespaced(("g", "s"), tool, 48) == before

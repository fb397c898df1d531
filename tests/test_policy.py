from __future__ import annotations

from virtual_mcp.policy import decide
from virtual_mcp.types import Principal, PrincipalKind

ALICE = Principal("alice@x", PrincipalKind.USER, frozenset({"platform"}))
CI = Principal("ci", PrincipalKind.VIRTUAL_ACCOUNT)


def test_deny_by_default() -> None:
    assert not decide(ALICE, frozenset()).allowed


def test_user_team_and_virtual_account_subjects() -> None:
    assert decide(ALICE, frozenset({"user:alice@x"})).allowed
    assert decide(ALICE, frozenset({"team:platform"})).allowed
    assert not decide(ALICE, frozenset({"team:support", "user:bob@x"})).allowed
    assert decide(CI, frozenset({"virtualaccount:ci"})).allowed
    # A virtual account is not a user of the same name, nor a member of a team it was not given.
    assert not decide(CI, frozenset({"user:ci", "team:platform"})).allowed

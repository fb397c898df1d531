"""The one canonical form of identities: ASCII letters folded, everything else kept, what cannot be an identity
refused with the position and code point of the offence."""

from __future__ import annotations

import pytest

from virtual_mcp.errors import InvalidIdentity
from virtual_mcp.identity import MAX_IDENTITY_CHARS, fold, identity, subject


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Dave@X.example", "dave@x.example"),
        ("DAVE@X.EXAMPLE", "dave@x.example"),
        ("\u212aate@x.example", "\u212aate@x.example"),  # KELVIN SIGN: str.lower() would make it "kate"
        ("\u0130smail@X.example", "\u0130smail@x.example"),  # I WITH DOT: str.lower() makes two characters
        ("Ölaf@Bücher.example", "Ölaf@bücher.example"),
        ("STRASSE@x", "strasse@x"),
        ("Stra\u00dfe@x", "stra\u00dfe@x"),
        ("\uff4bate@x.example", "\uff4bate@x.example"),  # FULLWIDTH k: kept, another identity
        ("e\u0301@x", "e\u0301@x"),  # a combining accent is a mark, not a control: kept as given (no NFC)
        ("a" * MAX_IDENTITY_CHARS, "a" * MAX_IDENTITY_CHARS),
    ],
)
def test_canonical_forms(name: str, canonical: str) -> None:
    assert identity(name) == canonical
    assert identity(canonical) == canonical
    assert fold(name) == canonical


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "invalid user: user is empty"),
        ("da ve", "invalid user 'da ve': contains whitespace (U+0020) at position 3"),
        ("dave\n", "invalid user 'dave\\n': contains a control character (U+000A) at position 5"),
        ("\x1b[31mdave", "invalid user '\\x1b[31mdave': contains a control character (U+001B) at position 1"),
        ("dave\x85", "invalid user 'dave\\x85': contains a control character (U+0085) at position 5"),
        ("da\u200bve", "invalid user 'da\\u200bve': contains an invisible format character (U+200B) at position 3"),
        ("dave\u202e", "invalid user 'dave\\u202e': contains an invisible format character (U+202E) at position 5"),
        ("dave\u00a0", "invalid user 'dave\\xa0': contains whitespace (U+00A0) at position 5"),
        ("dave\u2028", "invalid user 'dave\\u2028': contains whitespace (U+2028) at position 5"),
        ("dave\ud800", "invalid user 'dave\\ud800': contains a lone surrogate (U+D800) at position 5"),
        ("dave\ue000", "invalid user 'dave\\ue000': contains a private-use character (U+E000) at position 5"),
        ("dave\u0378", "invalid user 'dave\\u0378': contains an unassigned code point (U+0378) at position 5"),
        ("a" * (MAX_IDENTITY_CHARS + 1), f"is {MAX_IDENTITY_CHARS + 1} characters long (at most 256)"),
    ],
)
def test_what_cannot_be_an_identity_is_refused_precisely(name: str, message: str) -> None:
    with pytest.raises(InvalidIdentity) as refused:
        identity(name, "user")
    assert message in refused.value.message and refused.value.message.startswith("invalid user")
    assert refused.value.exit_code == 2 and refused.value.http_status == 400


def test_subjects() -> None:
    assert subject("user:Alice@X.example") == "user:alice@x.example"
    assert subject("team:Platform-Engineering") == "team:platform-engineering"
    assert subject("virtualaccount:CI") == "virtualaccount:ci"
    with pytest.raises(InvalidIdentity, match="must be one of user:NAME, team:NAME, virtualaccount:NAME"):
        subject("group:x")
    with pytest.raises(InvalidIdentity) as refused:
        subject("team:plat\u200bform")
    assert refused.value.message == (
        "invalid subject 'team:plat\\u200bform': contains an invisible format character (U+200B) at position 10; "
        "identities may not contain whitespace or control characters"
    )
    with pytest.raises(InvalidIdentity, match="must name someone in 1 to 256 characters"):
        subject("user:")

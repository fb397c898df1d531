"""Identities (users, teams, virtual accounts) in one canonical form, whatever door they come in by.

Every entry that names an identity goes through `identity()`: token creation, the configuration (authorized subjects,
collaborators, team names and members, virtual accounts), IdP JWT claims (subject and teams), loopback local mode,
and the CLI's filters (`audit`, `revoke`, `connections`). A name written `Dave@X.example` in one place and
`dave@x.example` in another is therefore one identity everywhere: revoking one revokes the other.

The rules:

- ASCII letters are folded to lower case, and nothing else is changed. Non-ASCII characters are kept exactly as given:
  no Unicode case folding and no normalisation form. Python's `str.lower()` maps KELVIN SIGN (U+212A) to `k`, so an
  IdP subject `\u212aate@x.example` would become kate's identity, with kate's teams, tokens and connected accounts;
  here it stays a distinct identity that matches nothing configured for kate. (E-mail domains are case-insensitive
  in ASCII; internationalised local parts and domains are compared as given.)
- Refused, with the position and code point of the offending character: an empty name, one longer than
  `MAX_IDENTITY_CHARS`, and any whitespace, control, format (bidi overrides, zero-width characters), surrogate,
  private-use or unassigned code point. Such a name cannot be typed back reliably and can be made to look like
  another one.
"""

from __future__ import annotations

import string
import unicodedata

from virtual_mcp.errors import InvalidIdentity

MAX_IDENTITY_CHARS = 256
SUBJECT_KINDS = ("user", "team", "virtualaccount")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_SHOWN_CHARS = 64


def fold(name: str) -> str:
    """`name` with ASCII letters in lower case and every other character unchanged (no validation)."""
    return name.lower() if name.isascii() else name.translate(_ASCII_LOWER)


def identity(name: object, what: str = "identity") -> str:
    """The canonical form of an identity name, or InvalidIdentity saying precisely what is wrong with it."""
    if not isinstance(name, str):
        raise InvalidIdentity(what, f"must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidIdentity(what, "is empty")
    if len(name) > MAX_IDENTITY_CHARS:
        raise InvalidIdentity(what, f"is {len(name)} characters long (at most {MAX_IDENTITY_CHARS})", shown(name))
    _printable(name, what)
    return fold(name)


def subject(text: str, what: str = "subject") -> str:
    """A `kind:name` subject (`user:alice@x`, `team:platform`, `virtualaccount:ci`) in canonical form."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in SUBJECT_KINDS:
        raise InvalidIdentity(what, f"must be one of {', '.join(k + ':NAME' for k in SUBJECT_KINDS)}", shown(text))
    if not name or len(name) > MAX_IDENTITY_CHARS:
        raise InvalidIdentity(what, f"must name someone in 1 to {MAX_IDENTITY_CHARS} characters", shown(text))
    _printable(text, what)
    return f"{kind}:{fold(name)}"


def _printable(text: str, what: str) -> None:
    # str.isprintable() is False for every control, format, surrogate, private-use, unassigned, separator and
    # whitespace code point except the ASCII space: one C-speed test for the usual, clean name.
    if text.isprintable() and " " not in text:
        return
    for position, char in enumerate(text, start=1):
        category = unicodedata.category(char)
        if category[0] in "CZ" or char.isspace():
            raise InvalidIdentity(
                what,
                f"contains {_kind(category, char)} (U+{ord(char):04X}) at position {position}; identities may not "
                "contain whitespace or control characters",
                shown(text),
            )


def shown(text: str) -> str:
    """`text` quoted for a message: every non-printable character escaped, at most `_SHOWN_CHARS` characters."""
    head = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return ascii(head) if not head.isprintable() else repr(head)


def _kind(category: str, char: str) -> str:
    if category == "Cc":
        return "a control character"
    if category == "Cf":
        return "an invisible format character"
    if category[0] == "Z" or char.isspace():
        return "whitespace"
    if category == "Cs":
        return "a lone surrogate"
    if category == "Co":
        return "a private-use character"
    return "an unassigned code point"

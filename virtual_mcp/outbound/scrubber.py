"""Finding the credentials the gateway presented to a backend in what the backend sends back, and removing them.

A backend may echo what it received (a debugging error that prints the request's headers, a tool that reflects its
input): the gateway's secret headers, a shared client-credentials token, a user's OAuth token, a caller's JWT or
forwarded header values would then reach the caller, the logs and the audit trail. The caller could use a shared
token to call the backend directly, outside policy and audit. Every answer is therefore checked for the values its
request presented (and cheap derived spellings of them) where it enters the gateway, once, on its raw bytes: the
common answer does not contain them and costs a few substring searches; one that does is rewritten at every depth.

This is a guard against echoes, not against a backend that wants to leak a credential it holds (it can send it
anywhere); spellings beyond the ones listed in `derived_forms` are not looked for.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
# Shorter values are not looked for: they would match ordinary text ("yes", an org id of a few letters).
MIN_SECRET_CHARS = 8
# A JSON string may spell any character as \\uXXXX and "/" as \\/: where the raw text has such escapes, the
# parsed answer is searched instead (rare: most serialisers write non-ASCII text as UTF-8).
_ESCAPES = re.compile(rb"\\[u/]")
_URL_REDACTED = quote(REDACTED, safe="")


def derived_forms(value: str) -> dict[str, str]:
    """`value` and the spellings an echo may give it, each with what replaces it: the credential after its scheme
    ("Bearer xyz" -> "xyz"), the user:password and password of a Basic credential, URL-encoded, and base64 (standard
    and URL-safe alphabets, at each of the three alignments it can have inside a longer base64 text).

    An encoded spelling is replaced in its own encoding, so the text around it stays what it was (a base64 image
    still decodes, with zero bytes where the credential was; a URL still parses)."""
    if len(value) < MIN_SECRET_CHARS:
        return {}  # nor any spelling of it: base64 makes a short value long, not secret
    plain = {value}
    scheme, _, rest = value.partition(" ")
    token = rest.strip()
    if len(token) >= MIN_SECRET_CHARS and scheme and " " not in token:
        plain.add(token)
        if scheme.lower() == "basic":
            plain.update(_basic_parts(token))
    forms = dict.fromkeys(plain, REDACTED)
    for form in plain:
        for encoded in (quote(form, safe=""), quote_plus(form, safe="")):
            forms.setdefault(encoded, _URL_REDACTED)
        for encoded in _base64_forms(form.encode()):
            forms.setdefault(encoded, "A" * len(encoded))
    return {form: replacement for form, replacement in forms.items() if len(form) >= MIN_SECRET_CHARS}


def _basic_parts(token: str) -> set[str]:
    try:
        decoded = base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return set()
    _, _, password = decoded.partition(":")
    return {decoded, password}


def _base64_forms(data: bytes) -> set[str]:
    """The part of base64(prefix + data + suffix) that depends on `data` alone, for each prefix length mod 3."""
    forms = set()
    for offset, start in ((0, 0), (1, 2), (2, 3)):
        end = (offset + len(data)) * 8 // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * offset + data)[start:end].decode())
    forms.add(base64.b64encode(data).decode())  # the whole value encoded on its own, padding included
    return forms


class Scrubber:
    """The values one credential presented upstream, to be found and replaced in what comes back."""

    __slots__ = ("_current", "_forms", "_raw", "echoes")

    def __init__(self, secrets: Iterable[str] = (), previous: Iterable[str] = ()) -> None:
        self._current = frozenset(secrets)
        forms: dict[str, str] = {}
        for secret in (*self._current, *previous):
            for form, replacement in derived_forms(secret).items():
                forms.setdefault(form, replacement)
        # Longest first: "Bearer xyz" is replaced whole rather than leaving "Bearer " behind.
        self._forms = tuple(sorted(forms.items(), key=lambda item: len(item[0]), reverse=True))
        self._raw = _spellings(forms)
        self.echoes = 0  # answers that carried one

    def __bool__(self) -> bool:
        return bool(self._forms)

    def rotated(self, secrets: Iterable[str]) -> Scrubber:
        """A scrubber for `secrets` that still knows this one's (a rotated token: answers to requests sent with the
        old one may still be on their way), but not the ones before: a session that lives through many rotations
        does not search every answer for every token it ever had."""
        fresh = Scrubber(secrets, previous=self._current)
        fresh.echoes = self.echoes
        return fresh

    def found_in(self, raw: bytes, parsed: Any) -> bool:
        """Whether the JSON text `raw` (parsed: `parsed`) holds one of the values, in any string or key."""
        if not self._forms:
            return False
        if any(spelling in raw for spelling in self._raw):
            return True
        if _ESCAPES.search(raw) is not None:
            # The same search over the answer written without optional escapes (and the C encoder's speed).
            canonical = json.dumps(parsed, ensure_ascii=False)
            return any(form in canonical for form, _ in self._forms)
        return False

    def scrub(self, value: Any) -> Any:
        """`value` with every occurrence of the values replaced, in every string and key, at any depth."""
        if isinstance(value, str):
            for form, replacement in self._forms:
                if form in value:
                    value = value.replace(form, replacement)
            return value
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value


def _spellings(forms: Iterable[str]) -> tuple[bytes, ...]:
    """What to look for in JSON text to find any of `forms`: each form as is and as a JSON encoder writes it inside
    a string (quotes and backslashes escaped), without those that contain another (finding the shorter one is
    enough): each search is a pass over the answer."""
    spellings = sorted({spelling for form in forms for spelling in (form.encode(), json.dumps(form)[1:-1].encode())})
    kept: list[bytes] = []
    for spelling in sorted(spellings, key=len):
        if not any(shorter in spelling for shorter in kept):
            kept.append(spelling)
    return tuple(kept)

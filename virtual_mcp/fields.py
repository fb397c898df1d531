"""HTTP field syntax (RFC 9110 5.1, 5.5, 7.2; RFC 3986 3.2.2; RFC 6454): what may travel as a header name and value,
and the only forms of `Host` and `Origin` the gateway accepts. Pure: no I/O.

Deliberately narrower than the grammars it follows: a header value the gateway writes is visible ASCII, space and
tab only (no obs-text), and a host is a DNS-style name, a dotted-quad IPv4 address or a bracketed IPv6 address
(no percent-encoding, no sub-delims, no zone id, no IPvFuture). Nothing legitimate needs more, and every extra form
is one more way for two parsers to disagree.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from virtual_mcp.errors import UnsendableHeader

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 5.1)
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")  # no CR, LF, NUL, other controls, DEL, nor non-ASCII
_REG_NAME = re.compile(r"[A-Za-z0-9._~-]{1,253}")
_DOTTED = re.compile(r"[0-9.]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SCHEMES = frozenset({"http", "https"})


def shown(text: str, limit: int = 64) -> str:
    """`text` quoted for a message, with control and non-ASCII characters escaped and the length bounded."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def header_problem(name: str, value: str) -> str | None:
    """What makes (name, value) unfit to be written as a header line, or None. Never quotes the value."""
    if not TOKEN.fullmatch(name):
        return f"{shown(name)} is not a valid header name"
    if not _FIELD_VALUE.fullmatch(value):
        return f"the value of header {name!r} contains CR, LF, another control character or non-ASCII"
    return None


def check_headers(headers: Mapping[str, str], server: str | None = None) -> None:
    """Raise UnsendableHeader for the first header that cannot be written as it is (header injection, request
    smuggling on a pooled connection), naming `server` if given; silent otherwise."""
    if "" not in headers and TOKEN.fullmatch("".join(headers)) and _FIELD_VALUE.fullmatch("".join(headers.values())):
        return  # every name a token and every value clean: the common case, in two scans (on every forwarded call)
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            where = f"backend {server!r}: " if server else ""
            raise UnsendableHeader(f"{where}{problem}; the request was not sent")


@dataclass(frozen=True, slots=True)
class Authority:
    """A parsed `host[:port]`: the host lower-cased (IPv6 without brackets), the port if one was given."""

    host: str
    port: int | None = None


def parse_authority(text: str) -> Authority | None:
    """`host[:port]` as RFC 9110 7.2 has it in `Host` (no userinfo, path, query, spaces), or None if malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        literal, rest = text[1:end], text[end + 1 :]
        if not literal or "%" in literal or literal[:1] in ("v", "V"):
            return None  # zone ids and IPvFuture: never a gateway's address
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            return None
    else:
        name, colon, port_text = text.partition(":")
        if not _REG_NAME.fullmatch(name):
            return None
        if _DOTTED.fullmatch(name):
            try:  # digits and dots only: a dotted-quad address, not a name that resolvers read as one ("127.1")
                ipaddress.IPv4Address(name)
            except ValueError:
                return None
        host, rest = name.lower(), colon + port_text
    if not rest:
        return Authority(host)
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
        return None
    return Authority(host, int(rest[1:]))


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    authority: Authority

    def serialized(self) -> str:
        host = f"[{self.authority.host}]" if ":" in self.authority.host else self.authority.host
        port = f":{self.authority.port}" if self.authority.port is not None else ""
        return f"{self.scheme}://{host}{port}"


def parse_origin(text: str) -> Origin | None:
    """An `Origin` header as browsers send it (RFC 6454 7: scheme "://" host [":" port], nothing else), http(s)
    only; None for anything else, `null` included."""
    scheme, sep, authority = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        return None
    parsed = parse_authority(authority)
    return Origin(scheme, parsed) if parsed is not None else None

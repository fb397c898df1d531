"""Core value types shared by every layer. Stdlib only, frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PrincipalKind(StrEnum):
    USER = "user"
    VIRTUAL_ACCOUNT = "virtualaccount"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (by e-mail) or a virtual account (a service identity), with their teams."""

    name: str
    kind: PrincipalKind
    teams: frozenset[str] = field(default_factory=frozenset)

    @property
    def subject(self) -> str:
        """The subject string as written in `authorized_subjects`, e.g. `user:alice@x` or `virtualaccount:ci`."""
        return f"{self.kind.value}:{self.name}"

    def subjects(self) -> frozenset[str]:
        """Every subject string this principal matches: itself and each of its teams."""
        return frozenset({self.subject, *(f"team:{t}" for t in self.teams)})


@dataclass(frozen=True, slots=True, order=True)
class ServerRef:
    """A server by its place in the configuration: `group/name`."""

    group: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, text: str) -> ServerRef:
        group, sep, name = text.partition("/")
        if not sep or not group or not name or "/" in name:
            raise ValueError(f"expected 'group/server', got {text!r}")
        return cls(group, name)


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A tool as the backend knows it."""

    server: ServerRef
    name: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check, with the reason for the audit trail."""

    allowed: bool
    reason: str


class AuthMethod(StrEnum):
    TOKEN = "token"  # noqa: S105 - a method name
    JWT = "jwt"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Authentication:
    """The outcome of inbound authentication for one request."""

    principal: Principal
    method: AuthMethod
    # The raw bearer, kept only when it is an IdP JWT that was verified (checked passthrough may forward it).
    verified_jwt: str | None = field(default=None, repr=False)
    jwt_audiences: frozenset[str] = frozenset()
    # The raw bearer as presented, so nothing can echo it upstream; never logged (repr=False).
    bearer: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Revocation:
    """Everything `subject` (e.g. `user:alice@x`) held before `revoked_at` (Unix time) is void."""

    id: int
    subject: str
    revoked_at: float

"""Which protocol era a backend speaks, and what a session learned of it when it negotiated."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Era(StrEnum):
    LEGACY = "legacy"  # 2025-11-25 and before: the initialize handshake, a session id
    MODERN = "modern"  # 2026-07-28: sessionless, every request carries its own envelope


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What one session learned of a backend, so the next session for another principal need not ask again."""

    era: Era
    protocol_version: str
    capabilities: dict[str, Any]
    server_info: dict[str, Any] | None

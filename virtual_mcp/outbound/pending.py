"""Short-lived secrets waiting for their owner (consent tickets, authorization states), bounded per owner.

Every entry expires. Each owner holds at most `per_owner` entries (past it, that owner's oldest goes), and the
table at most `total`; past that backstop the oldest entry of the owner holding the most goes, never simply the
oldest overall: one user, however busy, can only ever evict their own entries until they hold more than anyone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    owner: str
    value: T
    expires_at: float


class PendingTable(Generic[T]):
    def __init__(self, per_owner: int, total: int, clock: Callable[[], float]) -> None:
        if per_owner < 1 or total < per_owner:
            raise ValueError("need 1 <= per_owner <= total")
        self._per_owner = per_owner
        self._total = total
        self._clock = clock
        # Insertion order is expiry order (every entry lives as long, and `put` re-inserts), so pruning stops at
        # the first live entry.
        self._entries: dict[str, _Entry[T]] = {}
        self._by_owner: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))

    def put(self, key: str, owner: str, value: T, ttl: float) -> None:
        self.prune()
        self.pop(key)
        keys = self._by_owner.setdefault(owner, {})
        while len(keys) >= self._per_owner:
            self._remove(next(iter(keys)))
        if len(self._entries) >= self._total:
            self._remove(next(iter(self._by_owner[self._largest_owner()])))
        self._entries[key] = _Entry(owner, value, self._clock() + ttl)
        self._by_owner.setdefault(owner, {})[key] = None

    def owned(self, owner: str) -> list[tuple[str, T]]:
        """The live entries of `owner`, oldest first."""
        found = [(key, self.get(key)) for key in list(self._by_owner.get(owner, ()))]
        return [(key, value) for key, value in found if value is not None]

    def drop_owner(self, owner: str) -> None:
        for key in list(self._by_owner.get(owner, ())):
            self._remove(key)

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at < self._clock():
            self._remove(key)
            return None
        return entry.value

    def replace(self, key: str, value: T) -> None:
        """A new value for a live entry, its expiry unchanged."""
        if self.get(key) is not None:
            self._entries[key].value = value

    def pop(self, key: str) -> T | None:
        value = self.get(key)
        if value is not None:
            self._remove(key)
        return value

    def prune(self) -> None:
        now = self._clock()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at >= now:
                return
            self._remove(key)

    def _largest_owner(self) -> str:
        # Ties go to the owner whose bucket is oldest (dicts keep insertion order). Linear in the number of owners,
        # and only ever run when the whole table is full.
        return max(self._by_owner, key=lambda owner: len(self._by_owner[owner]))

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        keys = self._by_owner[entry.owner]
        del keys[key]
        if not keys:
            del self._by_owner[entry.owner]


Record = dict[str, Any]


class Pending(Protocol):
    """A table of pending records as consent flows use it: this process's (`LocalPending`), or the fleet's
    (fleet/pending.py)."""

    async def put(self, key: str, owner: str, value: Record, ttl: float) -> None: ...

    async def replace(self, key: str, value: Record) -> None:
        """A new value for a live entry, its expiry unchanged."""
        ...

    async def get(self, key: str) -> Record | None: ...

    async def pop(self, key: str) -> Record | None: ...

    async def owned(self, owner: str) -> list[tuple[str, Record]]: ...

    async def drop_owner(self, owner: str) -> None: ...


class LocalPending:
    """A `PendingTable` of this process as a `Pending`."""

    def __init__(self, per_owner: int, total: int, clock: Callable[[], float]) -> None:
        self.table: PendingTable[Record] = PendingTable(per_owner, total, clock)

    def count(self, owner: str) -> int:
        return self.table.count(owner)

    async def put(self, key: str, owner: str, value: Record, ttl: float) -> None:
        self.table.put(key, owner, value, ttl)

    async def replace(self, key: str, value: Record) -> None:
        self.table.replace(key, value)

    async def get(self, key: str) -> Record | None:
        return self.table.get(key)

    async def pop(self, key: str) -> Record | None:
        return self.table.pop(key)

    async def owned(self, owner: str) -> list[tuple[str, Record]]:
        return self.table.owned(owner)

    async def drop_owner(self, owner: str) -> None:
        self.table.drop_owner(owner)

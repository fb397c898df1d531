"""What the stores need of a database, whichever engine holds it: the embedded SQLite file (vault/db.py) or
PostgreSQL (vault/postgres.py). Both take SQL with `?` placeholders, in the subset both engines speak."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Params = Sequence[Any]


class Row(Protocol):
    """A result row: by column name or position."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class SqlTransaction(Protocol):
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement for each of `rows`."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> Sequence[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...


class SqlDatabase(Protocol):
    path: Any  # what messages name it by

    def transaction(self) -> AbstractAsyncContextManager[SqlTransaction]:
        """A write transaction, serialised with every other writer of the database (every process, every
        replica)."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> Sequence[Row]:
        """A read outside any transaction: sees everything committed."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        """One row of a small indexed read made on every request, as cheaply as the engine allows."""
        ...

    async def insert_batch(
        self, first_id_sql: str, statements: Callable[[int], Iterable[tuple[str, Iterable[Params]]]]
    ) -> None:
        """Under the write lock: the first free id (`first_id_sql`), then each (statement, rows) of
        `statements(first)`, in one transaction."""
        ...

    async def identity(self) -> str:
        """What tells this database from every other, however it was named (two URLs may name one database)."""
        ...

    def trust_problem(self) -> str | None: ...

    async def schema_version(self) -> int: ...

    async def close(self) -> None: ...

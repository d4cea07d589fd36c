"""Lists and look-ups of rows a user owns and may delete (boards, uploads, ...): one query shape
for every such read model, scoped to the user in SQL, so another user's row is simply not found.

A table qualifies when it has ``user_id``, ``deleted_at`` and a position column (the store
position of the row's creating event): that column orders the list newest first and is the
cursor's key, like every other list (read_models/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg

from read_models.models import Page
from read_models.queries import (
    _AFTER_EVERYTHING,
    DEFAULT_LIMIT,
    Db,
    _check_limit,
    _page,
    decode_cursor,
    encode_cursor,
)

T = TypeVar("T")


@dataclass(frozen=True)
class OwnedRows(Generic[T]):
    """One read model of owned rows. The names are the module's own constants, never input."""

    table: str
    key_column: str
    position_column: str
    columns: tuple[str, ...]
    item: type[T]

    def __post_init__(self) -> None:
        assert self.key_column in self.columns, "the key is one of the item's fields"
        assert self.position_column not in self.columns, "the position is paging only"

    def _of(self, row: asyncpg.Record) -> T:
        values: dict[str, Any] = {c: row[c] for c in self.columns}
        return self.item(**values)

    async def list(
        self, db: Db, user_id: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> Page[T]:
        """The user's rows that are not deleted, newest first."""
        limit = _check_limit(limit)
        kind, position = self.table, self.position_column
        (before,) = decode_cursor(cursor, kind, int) if cursor else (_AFTER_EVERYTHING,)
        rows = await db.fetch(
            f"SELECT {', '.join(self.columns)}, {position} FROM {self.table}"
            f" WHERE user_id = $1 AND deleted_at IS NULL AND {position} < $2"
            f" ORDER BY {position} DESC LIMIT $3",
            user_id,
            before,
            limit + 1,
        )
        return _page(rows, limit, self._of, lambda r: encode_cursor(kind, r[position]))

    async def get(self, db: Db, user_id: str, key: UUID) -> T | None:
        """The user's row ``key`` unless deleted; None for another user's."""
        row = await db.fetchrow(
            f"SELECT {', '.join(self.columns)} FROM {self.table}"
            f" WHERE user_id = $1 AND {self.key_column} = $2 AND deleted_at IS NULL",
            user_id,
            key,
        )
        return None if row is None else self._of(row)

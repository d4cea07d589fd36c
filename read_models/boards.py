"""Queries over the boards read model (projections/boards.py), scoped to one user in SQL:
another user's board is simply not found. Lists page like the others (read_models/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True, slots=True)
class Board:
    board_id: UUID
    name: str
    image_count: int
    created_at: datetime
    updated_at: datetime


_COLUMNS = "board_id, name, image_count, created_at, updated_at"


def _board(row: asyncpg.Record) -> Board:
    return Board(**{k: v for k, v in row.items() if k != "created_position"})


async def list_boards(
    db: Db, user_id: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Board]:
    """The user's boards that are not deleted, newest first."""
    limit = _check_limit(limit)
    (before,) = decode_cursor(cursor, "boards", int) if cursor else (_AFTER_EVERYTHING,)
    rows = await db.fetch(
        f"SELECT {_COLUMNS}, created_position FROM boards"
        " WHERE user_id = $1 AND deleted_at IS NULL AND created_position < $2"
        " ORDER BY created_position DESC LIMIT $3",
        user_id,
        before,
        limit + 1,
    )
    return _page(rows, limit, _board, lambda r: encode_cursor("boards", r["created_position"]))


async def get_board(db: Db, user_id: str, board_id: UUID) -> Board | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM boards"
        " WHERE user_id = $1 AND board_id = $2 AND deleted_at IS NULL",
        user_id,
        board_id,
    )
    return None if row is None else _board(row)

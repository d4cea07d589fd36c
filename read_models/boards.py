"""Queries over the boards read model (projections/boards.py), scoped to one user in SQL:
another user's board is simply not found. Lists page like the others (read_models/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from uuid import UUID

from read_models.owned import OwnedRows


@dataclass(frozen=True, slots=True)
class Board:
    board_id: UUID
    name: str
    image_count: int
    created_at: datetime
    updated_at: datetime


_BOARDS = OwnedRows(
    table="boards",
    key_column="board_id",
    position_column="created_position",
    columns=tuple(f.name for f in fields(Board)),
    item=Board,
)


# The user's boards that are not deleted, newest first; one of them by id.
list_boards = _BOARDS.list
get_board = _BOARDS.get

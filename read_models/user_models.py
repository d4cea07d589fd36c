"""Queries over the user models read model (projections/user_models.py), scoped to one user
in SQL: another user's model is simply not found. Lists page like the others
(read_models/queries.py).
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
class UserModel:
    model_id: UUID
    key: str
    name: str
    family: str
    size_bytes_max: int
    status: str  # pending | verified | rejected
    sha256: str | None
    size_bytes: int
    tensors: int
    rejection: str | None
    requested_at: datetime
    finished_at: datetime | None


_COLUMNS = """
    model_id, key, name, family, size_bytes_max, status, sha256, size_bytes, tensors,
    rejection, requested_at, finished_at
"""


def _user_model(row: asyncpg.Record) -> UserModel:
    return UserModel(**{k: v for k, v in row.items() if k != "requested_position"})


async def list_user_models(
    db: Db, user_id: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[UserModel]:
    """The user's models that are not deleted (any status), newest first."""
    limit = _check_limit(limit)
    (before,) = decode_cursor(cursor, "user_models", int) if cursor else (_AFTER_EVERYTHING,)
    rows = await db.fetch(
        f"SELECT {_COLUMNS}, requested_position FROM user_models"
        " WHERE user_id = $1 AND deleted_at IS NULL AND requested_position < $2"
        " ORDER BY requested_position DESC LIMIT $3",
        user_id,
        before,
        limit + 1,
    )
    return _page(
        rows, limit, _user_model, lambda r: encode_cursor("user_models", r["requested_position"])
    )

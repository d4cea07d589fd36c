"""Queries over the uploads read model (projections/uploads.py), scoped to one user in SQL:
another user's upload is simply not found. Lists page like the others (read_models/queries.py).
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
class Upload:
    upload_id: UUID
    key: str
    content_type: str
    size_bytes_max: int
    status: str  # pending | completed | rejected
    format: str | None
    width: int | None
    height: int | None
    size_bytes: int
    rejection: str | None
    requested_at: datetime
    finished_at: datetime | None


_COLUMNS = """
    upload_id, key, content_type, size_bytes_max, status, format, width, height, size_bytes,
    rejection, requested_at, finished_at
"""


def _upload(row: asyncpg.Record) -> Upload:
    return Upload(**{k: v for k, v in row.items() if k != "requested_position"})


async def list_uploads(
    db: Db, user_id: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Upload]:
    """The user's uploads that are not deleted (any status), newest first."""
    limit = _check_limit(limit)
    (before,) = decode_cursor(cursor, "uploads", int) if cursor else (_AFTER_EVERYTHING,)
    rows = await db.fetch(
        f"SELECT {_COLUMNS}, requested_position FROM uploads"
        " WHERE user_id = $1 AND deleted_at IS NULL AND requested_position < $2"
        " ORDER BY requested_position DESC LIMIT $3",
        user_id,
        before,
        limit + 1,
    )
    return _page(rows, limit, _upload, lambda r: encode_cursor("uploads", r["requested_position"]))


async def get_upload(db: Db, user_id: str, upload_id: UUID) -> Upload | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM uploads"
        " WHERE user_id = $1 AND upload_id = $2 AND deleted_at IS NULL",
        user_id,
        upload_id,
    )
    return None if row is None else _upload(row)

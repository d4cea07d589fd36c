"""Queries over the uploads read model (projections/uploads.py), scoped to one user in SQL:
another user's upload is simply not found. Lists page like the others (read_models/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from uuid import UUID

from read_models.owned import OwnedRows


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


_UPLOADS = OwnedRows(
    table="uploads",
    key_column="upload_id",
    position_column="requested_position",
    columns=tuple(f.name for f in fields(Upload)),
    item=Upload,
)
# The user's uploads that are not deleted (any status), newest first; one of them by id.
list_uploads = _UPLOADS.list
get_upload = _UPLOADS.get

"""Queries over the user models read model (projections/user_models.py), scoped to one user
in SQL: another user's model is simply not found. Lists page like the others
(read_models/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from uuid import UUID

from read_models.owned import OwnedRows


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


_USER_MODELS = OwnedRows(
    table="user_models",
    key_column="model_id",
    position_column="requested_position",
    columns=tuple(f.name for f in fields(UserModel)),
    item=UserModel,
)
# The user's models that are not deleted (any status), newest first.
list_user_models = _USER_MODELS.list

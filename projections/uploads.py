"""Projection "uploads": one row per upload, its verdict, and whether it was deleted (the
statements of every verified object: projections/verified_objects.py)."""

from __future__ import annotations

from domain.uploads import Upload
from projections.verified_objects import VerifiedObjectsProjection, verified_object_statements


class UploadsProjection(VerifiedObjectsProjection):
    name = "uploads"
    kind = Upload
    tables = ("uploads",)
    event_statements = verified_object_statements(
        Upload,
        table="uploads",
        id_column="upload_id",
        requested=("user_id", "key", "content_type", "size_bytes_max"),
        accepted_event="Completed",
        accepted=("format", "width", "height", "size_bytes"),
    )

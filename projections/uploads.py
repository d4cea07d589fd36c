"""Projection "uploads": one row per upload, its verdict, and whether it was deleted (the
statements of every verified object: projections/verified_objects.py). What the owner records
of an upload as one of their images (its flags, its board) is the images table's: the jobs
projection's (projections/jobs.py), so this one leaves those events."""

from __future__ import annotations

from domain.uploads import Upload
from eventstore.envelope import Envelope
from projections.jobs import UPLOAD_IMAGE_EVENTS
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

    def wants(self, env: Envelope) -> bool:
        return super().wants(env) and env.type not in UPLOAD_IMAGE_EVENTS

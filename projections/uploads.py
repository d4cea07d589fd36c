"""Projection "uploads": one row per upload, its verdict, and whether it was deleted.

Every statement starts with $1 upload id, $2 occurred_at, $3 position. An upload's later
events update its row, which must exist (the runner delivers an aggregate's events in order);
a deleted upload keeps its row, marked, and stops counting in the storage quota.
"""

from __future__ import annotations

from domain.uploads import UploadStatus
from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import EventStatements, TableProjection

_REQUESTED = """
INSERT INTO uploads (
    upload_id, user_id, key, content_type, size_bytes_max, status, requested_at,
    requested_position, position
)
VALUES ($1, $4, $5, $6, $7, $8, $2, $3, $3)
"""


def _update(assignments: str) -> str:
    return f"""
WITH upload AS (
    UPDATE uploads SET {assignments}, position = $3 WHERE upload_id = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM upload), 'an event of upload ' || $1::text || ', never requested'
)
"""


_STATEMENTS: EventStatements = {
    "Upload.Requested": (
        _REQUESTED,
        lambda ev: (
            ev.user_id,
            ev.key,
            ev.content_type,
            ev.size_bytes_max,
            UploadStatus.PENDING.value,
        ),
    ),
    "Upload.Completed": (
        _update(
            "status = $4, format = $5, width = $6, height = $7, size_bytes = $8, finished_at = $2"
        ),
        lambda ev: (UploadStatus.COMPLETED.value, ev.format, ev.width, ev.height, ev.size_bytes),
    ),
    "Upload.Rejected": (
        _update("status = $4, rejection = $5, finished_at = $2"),
        lambda ev: (UploadStatus.REJECTED.value, ev.reason),
    ),
    "Upload.Deleted": (_update("deleted_at = $2"), lambda ev: ()),
}


class UploadsProjection(TableProjection):
    name = "uploads"
    event_statements = _STATEMENTS
    topics = (JOBS_TOPIC,)
    tables = ("uploads",)

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "Upload"

"""Projection "user_models": one row per user model (a LoRA), its verdict, and whether it was
deleted.

Every statement starts with $1 model id, $2 occurred_at, $3 position. A model's later events
update its row, which must exist (the runner delivers an aggregate's events in order); a
deleted model keeps its row, marked, and stops counting in the storage quota.
"""

from __future__ import annotations

from domain.user_models import UserModelStatus
from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import EventStatements, TableProjection

_REQUESTED = """
INSERT INTO user_models (
    model_id, user_id, key, name, family, size_bytes_max, status, requested_at,
    requested_position, position
)
VALUES ($1, $4, $5, $6, $7, $8, $9, $2, $3, $3)
"""


def _update(assignments: str) -> str:
    return f"""
WITH model AS (
    UPDATE user_models SET {assignments}, position = $3 WHERE model_id = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM model), 'an event of user model ' || $1::text || ', never requested'
)
"""


_STATEMENTS: EventStatements = {
    "UserModel.Requested": (
        _REQUESTED,
        lambda ev: (
            ev.user_id,
            ev.key,
            ev.name,
            ev.family,
            ev.size_bytes_max,
            UserModelStatus.PENDING.value,
        ),
    ),
    "UserModel.Verified": (
        _update("status = $4, sha256 = $5, size_bytes = $6, tensors = $7, finished_at = $2"),
        lambda ev: (UserModelStatus.VERIFIED.value, ev.sha256, ev.size_bytes, ev.tensors),
    ),
    "UserModel.Rejected": (
        _update("status = $4, rejection = $5, finished_at = $2"),
        lambda ev: (UserModelStatus.REJECTED.value, ev.reason),
    ),
    "UserModel.Deleted": (_update("deleted_at = $2"), lambda ev: ()),
}


class UserModelsProjection(TableProjection):
    name = "user_models"
    event_statements = _STATEMENTS
    topics = (JOBS_TOPIC,)
    tables = ("user_models",)

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "UserModel"

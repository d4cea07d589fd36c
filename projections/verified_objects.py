"""The read-model statements of a verified object (domain/verified_objects.py): one row per
object, its verdict, and whether it was deleted; the base of projections/uploads.py and
projections/user_models.py.

Every statement starts with $1 the object's id, $2 occurred_at, $3 position. The requested
event inserts the row (its fields are columns of the same names); the later events update
it, and it must exist (the runner delivers an aggregate's events in order). A deleted object
keeps its row, marked, and stops counting in the storage quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from domain.verified_objects import PENDING, REJECTED, VerifiedObject
from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import EventStatements, TableProjection

FIRST_FIELD = 4  # $1..$3 are the key of every statement


def _placeholders(count: int, first: int = FIRST_FIELD) -> list[str]:
    return [f"${n}" for n in range(first, first + count)]


def verified_object_statements(
    kind: type[VerifiedObject[Any]],
    *,
    table: str,
    id_column: str,
    requested: Sequence[str],
    accepted_event: str,
    accepted: Sequence[str],
) -> EventStatements:
    """The statements of ``kind``'s events on ``table``: ``requested``, the fields of its
    Requested event that are columns; ``accepted``, those of its ``accepted_event``."""
    aggregate = kind.__name__
    insert_columns = (id_column, *requested, "status", "requested_at", "requested_position")
    values = ("$1", *_placeholders(len(requested) + 1), "$2", "$3")
    insert = (
        f"INSERT INTO {table} ({', '.join(insert_columns)}, position)\n"
        f"VALUES ({', '.join(values)}, $3)"
    )

    def update(assignments: str) -> str:
        return f"""
WITH updated AS (
    UPDATE {table} SET {assignments}, position = $3 WHERE {id_column} = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM updated), 'an event of {aggregate} ' || $1::text || ', never requested'
)
"""

    def verdict(columns: Sequence[str]) -> str:
        """The status ($4), ``columns`` from $5 on, and when the verdict came."""
        fields = ("status", *columns)
        values = _placeholders(len(fields))
        return update(
            ", ".join(f"{f} = {v}" for f, v in zip(fields, values, strict=True))
            + ", finished_at = $2"
        )

    return {
        f"{aggregate}.Requested": (
            insert,
            lambda ev: (*(getattr(ev, name) for name in requested), PENDING),
        ),
        f"{aggregate}.{accepted_event}": (
            verdict(accepted),
            lambda ev: (kind.ACCEPTED, *(getattr(ev, name) for name in accepted)),
        ),
        f"{aggregate}.Rejected": (verdict(("rejection",)), lambda ev: (REJECTED, ev.reason)),
        f"{aggregate}.Deleted": (update("deleted_at = $2"), lambda ev: ()),
    }


class VerifiedObjectsProjection(TableProjection):
    """A projection of one kind of verified object (its events travel with the jobs)."""

    kind: ClassVar[type[VerifiedObject[Any]]]
    topics = (JOBS_TOPIC,)

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == self.kind.__name__

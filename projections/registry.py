"""Every projection the runners know, by name (``pinksea project --only NAME``).

Each is a ``StatementProjection``: ``apply`` for one event (live), ``apply_batch`` for many
in few pipelined round trips (rebuild)."""

from __future__ import annotations

from projections.batching import StatementProjection
from projections.boards import BoardsProjection
from projections.hold_outcomes import HoldOutcomesProjection
from projections.jobs import JobsProjection
from projections.ledger import LedgerProjection
from projections.subscriptions import SubscriptionsProjection
from projections.uploads import UploadsProjection
from projections.user_models import UserModelsProjection

ALL_PROJECTIONS: tuple[StatementProjection, ...] = (
    LedgerProjection(),
    JobsProjection(),
    SubscriptionsProjection(),
    UploadsProjection(),
    HoldOutcomesProjection(),
    BoardsProjection(),
    UserModelsProjection(),
)


def get_projection(name: str) -> StatementProjection:
    for projection in ALL_PROJECTIONS:
        if projection.name == name:
            return projection
    known = ", ".join(p.name for p in ALL_PROJECTIONS)
    raise KeyError(f"no projection {name!r}; known projections: {known}")

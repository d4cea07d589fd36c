"""Every projection the runners know, by name (``pinksea project --only NAME``)."""

from __future__ import annotations

from projections.base import Projection
from projections.jobs import JobsProjection
from projections.ledger import LedgerProjection
from projections.subscriptions import SubscriptionsProjection

ALL_PROJECTIONS: tuple[Projection, ...] = (
    LedgerProjection(),
    JobsProjection(),
    SubscriptionsProjection(),
)


def get_projection(name: str) -> Projection:
    for projection in ALL_PROJECTIONS:
        if projection.name == name:
            return projection
    known = ", ".join(p.name for p in ALL_PROJECTIONS)
    raise KeyError(f"no projection {name!r}; known projections: {known}")

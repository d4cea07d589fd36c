"""A user's statement, straight from their credit account's events.

The statement shows the two user accounts of the double entry: ``available`` (spendable or
not-yet-valid credit) and ``held`` (reserved by running jobs). Every posting on them is a
line, in commit order, with the balances after it. ``as_of`` replays only what had happened
by that instant, so a statement can be reproduced exactly for any past moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit.store import StoredDomainEvent
from domain.postings import available, held, postings_for


@dataclass(frozen=True)
class StatementLine:
    occurred_at: datetime
    position: int
    event_id: str
    kind: str
    job_id: str | None
    lot_id: str | None
    available_delta_mc: int
    held_delta_mc: int
    available_mc: int
    held_mc: int


@dataclass
class Statement:
    user_id: str
    opening_available_mc: int = 0
    opening_held_mc: int = 0
    lines: list[StatementLine] = field(default_factory=list)
    closing_available_mc: int = 0
    closing_held_mc: int = 0


def job_of(event: Any) -> str | None:
    return getattr(event, "job_id", None)


def build_statement(
    user_id: str,
    events: Iterable[StoredDomainEvent],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: datetime | None = None,
) -> Statement:
    """``events``: the user's credit-account events in order. Lines are those with
    ``start <= occurred_at < end``; events after ``as_of`` are ignored entirely."""
    acct_available, acct_held = available(user_id), held(user_id)
    statement = Statement(user_id)
    avail = hold = 0
    for stored in events:
        ev = stored.event
        if as_of is not None and ev.timestamp > as_of:
            continue
        if end is not None and ev.timestamp >= end:
            continue
        before_window = start is not None and ev.timestamp < start
        for posting in postings_for(user_id, ev):
            if posting.account not in (acct_available, acct_held):
                continue
            d_avail = posting.amount_mc if posting.account == acct_available else 0
            d_held = posting.amount_mc if posting.account == acct_held else 0
            avail += d_avail
            hold += d_held
            if before_window:
                continue
            statement.lines.append(
                StatementLine(
                    occurred_at=ev.timestamp,
                    position=stored.position,
                    event_id=f"{ev.originator_id}:{ev.originator_version}",
                    kind=type(ev).__name__,
                    job_id=job_of(ev),
                    lot_id=posting.lot_id,
                    available_delta_mc=d_avail,
                    held_delta_mc=d_held,
                    available_mc=avail,
                    held_mc=hold,
                )
            )
        if before_window:
            statement.opening_available_mc, statement.opening_held_mc = avail, hold
    statement.closing_available_mc, statement.closing_held_mc = avail, hold
    return statement

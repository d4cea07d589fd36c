"""A user's statement, straight from their credit account's events.

The statement shows the two user accounts of the double entry: ``available`` (spendable or
not-yet-valid credit) and ``held`` (reserved by running jobs). Every posting on them is a
line, in commit order, with the balances after it. ``as_of`` replays only what had happened
by that instant, so a statement can be reproduced exactly for any past moment.

Its lines are those of ``GET /v1/me/ledger`` (``domain.ledger_changes.StatementLine``): the
same kinds (``LineKind``), amounts (``amount_mc`` is the change of the available balance,
``held_change_mc`` of the held one, ``available_after_mc`` and ``held_after_mc`` the balances
after the line) and descriptions. The API has a line per event, this statement a line per
posting, so per lot: an event's lines here add up to its line there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit.store import StoredDomainEvent
from domain.ledger_changes import StatementLine, ledger_change
from domain.postings import available, held, postings_for

__all__ = ["Statement", "StatementLine", "build_statement"]


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
        postings = postings_for(user_id, ev)
        change = ledger_change(ev) if postings and not before_window else None
        for posting in postings:
            if posting.account not in (acct_available, acct_held):
                continue
            d_avail = posting.amount_mc if posting.account == acct_available else 0
            d_held = posting.amount_mc if posting.account == acct_held else 0
            avail += d_avail
            hold += d_held
            if change is None:
                continue
            statement.lines.append(
                StatementLine(
                    occurred_at=ev.timestamp,
                    position=stored.position,
                    event_id=f"{ev.originator_id}:{ev.originator_version}",
                    kind=change.kind,
                    job_id=job_of(ev),
                    lot_id=posting.lot_id,
                    amount_mc=d_avail,
                    held_change_mc=d_held,
                    available_after_mc=avail,
                    held_after_mc=hold,
                    description=change.description,
                )
            )
        if before_window:
            statement.opening_available_mc, statement.opening_held_mc = avail, hold
    statement.closing_available_mc, statement.closing_held_mc = avail, hold
    return statement

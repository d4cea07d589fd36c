"""Calendar months counted from an anchor: the periods of an enterprise contract
(``Subscription.start_contract_period``), whatever the month's length."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved by whole calendar months, its day clamped to the month's last day
    (Jan 31 + 1 month = Feb 28 or 29; + 2 months = Mar 31: always counted from the anchor)."""
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month0 = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def contract_period(anchor: datetime, at: datetime) -> tuple[datetime, datetime]:
    """The monthly period, counted from ``anchor``, that contains ``at`` (>= anchor)."""
    assert at >= anchor, "a contract period is asked for before the contract began"
    local = at.astimezone(anchor.tzinfo)
    months = (local.year - anchor.year) * 12 + (local.month - anchor.month)
    if add_months(anchor, months) > at:
        months -= 1
    start, end = add_months(anchor, months), add_months(anchor, months + 1)
    assert start <= at < end
    return start, end

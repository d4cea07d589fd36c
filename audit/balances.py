"""Every user's balances at an instant, replayed from the event store."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount
from domain.postings import available, held, postings_for


@dataclass(frozen=True)
class UserBalance:
    user_id: str
    available_mc: int
    held_mc: int


async def balances_as_of(
    events: AsyncIterable[StoredDomainEvent], as_of: datetime | None
) -> dict[str, UserBalance]:
    users: dict[UUID, str] = {}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    async for stored in events:
        ev = stored.event
        if isinstance(ev, CreditAccount.Opened):
            users[ev.originator_id] = ev.user_id
        if as_of is not None and ev.timestamp > as_of:
            continue
        user = users[ev.originator_id]
        for p in postings_for(user, ev):
            if p.account == available(user):
                totals[user][0] += p.amount_mc
            elif p.account == held(user):
                totals[user][1] += p.amount_mc
    return {u: UserBalance(u, a, h) for u, (a, h) in totals.items()}

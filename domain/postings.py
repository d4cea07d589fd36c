"""Double entry: every credit-account event as balanced postings between accounts.

A posting adds ``amount_mc`` to one account's balance; the postings of every event sum to zero.
Accounts:

- ``user:<user_id>:available`` - spendable or not-yet-valid credit of the user's lots
- ``user:<user_id>:held``      - credit reserved by open holds
- ``revenue``                  - credit consumed by settled jobs (GPU time sold)
- ``expired``                  - credit that expired unspent
- ``funding:<source>``         - where granted credit came from (subscription, trial, ...)

Postings carry the lot they concern, so a statement or an export can be read per lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from domain.credits import CreditAccount, LotSource

REVENUE = "revenue"
EXPIRED = "expired"


def available(user_id: str) -> str:
    return f"user:{user_id}:available"


def held(user_id: str) -> str:
    return f"user:{user_id}:held"


def funding(source: str) -> str:
    return f"funding:{source}"


@dataclass(frozen=True)
class Posting:
    account: str
    amount_mc: int
    lot_id: str | None = None


def _move(src: str, dst: str, mc: int, lot_id: str | None) -> list[Posting]:
    # Events carry movements as non-negative amounts; the direction is src -> dst.
    assert mc >= 0, f"a movement of {mc} mc from {src} to {dst}"
    assert src != dst, f"a movement from {src} to itself"
    if mc == 0:
        return []
    return [Posting(src, -mc, lot_id), Posting(dst, mc, lot_id)]


def postings_for(user_id: str, ev: DomainEventProtocol[UUID]) -> list[Posting]:
    """The balanced postings of one CreditAccount event (none for non-movements)."""
    user_avail, user_held = available(user_id), held(user_id)
    out: list[Posting] = []
    if isinstance(ev, CreditAccount.CreditsGranted):
        out += _move(funding(ev.source), user_avail, ev.amount_mc, ev.lot_id)
    elif isinstance(ev, CreditAccount.CreditsReserved):
        for a in ev.allocations:
            out += _move(user_avail, user_held, a["mc"], a["lot_id"])
    elif isinstance(ev, CreditAccount.HoldSettled):
        for s in ev.parts:
            out += _move(user_held, REVENUE, s["charged_mc"], s["lot_id"])
            out += _move(user_held, user_avail, s["released_mc"], s["lot_id"])
            out += _move(user_held, EXPIRED, s["expired_mc"], s["lot_id"])
    elif isinstance(ev, CreditAccount.HoldReleased):
        for r in ev.parts:
            out += _move(user_held, user_avail, r["released_mc"], r["lot_id"])
            out += _move(user_held, EXPIRED, r["expired_mc"], r["lot_id"])
    elif isinstance(ev, CreditAccount.LotExpired):
        out += _move(user_avail, EXPIRED, ev.expired_mc, ev.lot_id)
    elif isinstance(ev, CreditAccount.CreditsAdjusted):
        if ev.new_lot is not None:
            out += _move(
                funding(LotSource.ADMIN.value), user_avail, ev.amount_mc, ev.new_lot["lot_id"]
            )
        for d in ev.debits:
            out += _move(user_avail, funding(LotSource.ADMIN.value), d["mc"], d["lot_id"])
    elif isinstance(ev, CreditAccount.CreditsRefunded):
        for back in ev.returns:
            out += _move(REVENUE, user_avail, back["mc"], back["lot_id"])
        if ev.new_lot is not None:
            out += _move(REVENUE, user_avail, ev.new_lot["mc"], ev.new_lot["lot_id"])
    # Double entry: whatever an event moves, it moves from somewhere (README, "Double entry").
    assert sum(p.amount_mc for p in out) == 0, f"unbalanced postings of {type(ev).__name__}"
    return out

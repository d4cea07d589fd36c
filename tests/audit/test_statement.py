"""Statements at random as-of instants equal references computed directly from raw events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.statement import build_statement
from audit.store import StoredDomainEvent
from domain import ids
from domain.application import PinkseaApplication
from domain.credits import CreditAccount, LotSource
from domain.errors import DomainError
from domain.jobs import JobParameters

T0 = datetime(2026, 2, 1, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="p", steps=4, width=64, height=64)

commands = st.lists(
    st.tuples(
        st.sampled_from(["grant", "job", "cancel", "adjust", "expire", "refund"]),
        st.integers(1, 60 * 24 * 12),  # minutes until this command
        st.integers(1, 5000),
    ),
    min_size=1,
    max_size=25,
)


def reference(events: list[StoredDomainEvent], as_of: datetime) -> tuple[int, int]:
    """(available, held) summed straight from the events' own fields, no postings."""
    avail = held = 0
    for stored in events:
        ev = stored.event
        if ev.timestamp > as_of:
            continue
        if isinstance(ev, CreditAccount.CreditsGranted):
            avail += ev.amount_mc
        elif isinstance(ev, CreditAccount.CreditsReserved):
            avail -= ev.amount_mc
            held += ev.amount_mc
        elif isinstance(ev, CreditAccount.HoldSettled):
            held -= sum(p["charged_mc"] + p["released_mc"] + p["expired_mc"] for p in ev.parts)
            avail += sum(p["released_mc"] for p in ev.parts)
        elif isinstance(ev, CreditAccount.HoldReleased):
            held -= sum(p["released_mc"] + p["expired_mc"] for p in ev.parts)
            avail += sum(p["released_mc"] for p in ev.parts)
        elif isinstance(ev, CreditAccount.LotExpired):
            avail -= ev.expired_mc
        elif isinstance(ev, (CreditAccount.CreditsAdjusted, CreditAccount.CreditsRefunded)):
            avail += ev.amount_mc
    return avail, held


def replayed(events: list[StoredDomainEvent], as_of: datetime) -> tuple[int, int]:
    account = None
    for stored in events:
        if stored.event.timestamp <= as_of:
            account = stored.event.mutate(account)
    if account is None:
        return 0, 0
    return sum(lot.remaining_mc for lot in account.lots.values()), account.held_mc


@settings(max_examples=150, deadline=None)
@given(commands, st.data())
def test_statement_as_of_equals_references(script: list[tuple[str, int, int]], data) -> None:  # type: ignore[no-untyped-def]
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    now = T0
    app.register_user("u", now)
    jobs = []
    for n, (kind, minutes, amount) in enumerate(script):
        now += timedelta(minutes=minutes)
        try:
            if kind == "grant":
                app.grant_credits(
                    "u",
                    grant_id=f"g{n}",
                    source=LotSource.PURCHASE,
                    amount_mc=amount * 10,
                    valid_from=now,
                    valid_until=now + timedelta(days=3),
                    actor="t",
                    reason="t",
                    at=now,
                )
            elif kind == "job":
                job = app.submit_job("u", idempotency_key=f"j{n}", params=TINY, at=now)
                if job.status == "accepted":
                    app.record_dispatch(job.job_id, attempt=1, worker_id="w", at=now)
                    app.record_start(job.job_id, attempt=1, worker_id="w", gpu="T4", at=now)
                    app.complete_job(
                        job.job_id, attempt=1, gpu_ms=amount % 900, cuda_ms=None, images=[], at=now
                    )
                    jobs.append(job.job_id)
            elif kind == "cancel":
                job = app.submit_job("u", idempotency_key=f"c{n}", params=TINY, at=now)
                app.cancel_job(job.job_id, now)
            elif kind == "adjust":
                app.adjust_credits(
                    "u",
                    adjustment_id=f"a{n}",
                    amount_mc=amount - 2500,
                    reason="r",
                    actor="t",
                    at=now,
                )
            elif kind == "expire":
                app.expire_due("u", now)
            elif kind == "refund" and jobs:
                app.refund_job(jobs.pop(0), reason="r", actor="t", at=now)
        except DomainError:
            pass  # e.g. a debit larger than the balance: refused, nothing recorded
    account_id = ids.account_id("u")
    events = [
        StoredDomainEvent(n.id, app.mapper.to_domain_event(n))
        for n in app.recorder.select_notifications(start=1, limit=10_000)
        if n.originator_id == account_id
    ]
    offset = data.draw(st.integers(0, int((now - T0).total_seconds()) + 60), label="as_of seconds")
    as_of = T0 + timedelta(seconds=offset)
    s = build_statement("u", events, as_of=as_of)
    expected = reference(events, as_of)
    assert (s.closing_available_mc, s.closing_held_mc) == expected == replayed(events, as_of)
    # Running balances chain: each line's balance is the previous plus its deltas.
    avail = held = 0
    for line in s.lines:
        avail += line.available_delta_mc
        held += line.held_delta_mc
        assert (line.available_mc, line.held_mc) == (avail, held)
    # A window [start, end) opens at the balance before start and closes at the one before end.
    mid = T0 + timedelta(seconds=offset // 2)
    window = build_statement("u", events, start=mid, end=as_of)
    assert (window.opening_available_mc, window.opening_held_mc) == reference(
        [e for e in events if e.event.timestamp < mid], as_of
    )

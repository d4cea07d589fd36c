"""Statements at random as-of instants equal references computed directly from raw events, and
speak the vocabulary of ``GET /v1/me/ledger``."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from api.schemas import LedgerLine
from audit.statement import build_statement
from audit.store import StoredDomainEvent
from domain import ids
from domain.application import PinkseaApplication
from domain.credits import CreditAccount, LotSource
from domain.errors import DomainError
from domain.jobs import JobParameters
from domain.ledger_changes import LineKind, StatementLine, ledger_change
from eventstore.decoding import decode
from read_models.models import LedgerEntry

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
    account: CreditAccount | None = None
    for stored in events:
        if stored.event.timestamp <= as_of:
            account = stored.event.mutate(account)
    if account is None:
        return 0, 0
    return sum(lot.remaining_mc for lot in account.lots.values()), account.held_mc


@settings(max_examples=150, deadline=None)
@given(commands, st.data())
def test_statement_as_of_equals_references(
    script: list[tuple[str, int, int]], data: st.DataObject
) -> None:
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
                if job.job_id is not None:  # accepted (a refusal saves no job)
                    app.record_dispatch(job.job_id, attempt=1, worker_id="w", at=now)
                    app.record_start(job.job_id, attempt=1, worker_id="w", gpu="T4", at=now)
                    app.complete_job(
                        job.job_id, attempt=1, gpu_ms=amount % 900, cuda_ms=None, images=[], at=now
                    )
                    jobs.append(job.job_id)
            elif kind == "cancel":
                job = app.submit_job("u", idempotency_key=f"c{n}", params=TINY, at=now)
                if job.job_id is not None:
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
        StoredDomainEvent(n.id, decode(n))
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
        avail += line.amount_mc
        held += line.held_change_mc
        assert (line.available_after_mc, line.held_after_mc) == (avail, held)
    # A line per posting; an event's lines add up to its line in GET /v1/me/ledger (the ledger
    # projection's, from the same domain function): kind, description and amounts.
    by_event: dict[str, list[StatementLine]] = defaultdict(list)
    for line in s.lines:
        by_event[line.event_id].append(line)
    for stored in events:
        ev = stored.event
        lines = by_event.pop(f"{ev.originator_id}:{ev.originator_version}", [])
        change = ledger_change(ev)
        if not lines:
            continue
        assert change is not None
        assert {(line.kind, line.description) for line in lines} == {
            (change.kind, change.description)
        }
        assert sum(line.amount_mc for line in lines) == change.amount_mc
        assert sum(line.held_change_mc for line in lines) == change.held_change_mc
    assert not by_event
    # A window [start, end) opens at the balance before start and closes at the one before end.
    mid = T0 + timedelta(seconds=offset // 2)
    window = build_statement("u", events, start=mid, end=as_of)
    assert (window.opening_available_mc, window.opening_held_mc) == reference(
        [e for e in events if e.event.timestamp < mid], as_of
    )


def test_both_statements_share_one_vocabulary() -> None:
    """The CLI's statement lines are the read model's, and the API's lines name every field
    alike (each amount in credits too); the read model's kinds are the domain's
    (tests/integration/test_read_models.py)."""
    assert LedgerEntry is StatementLine
    fields = {f.name for f in dataclasses.fields(StatementLine)}
    api = set(LedgerLine.model_json_schema(mode="serialization")["properties"])
    amounts = {name for name in fields if name.endswith("_mc")}
    assert amounts == {"amount_mc", "held_change_mc", "available_after_mc", "held_after_mc"}
    assert fields | {name.replace("_mc", "_credits") for name in amounts} == api
    assert [k.value for k in LineKind] == [
        "grant", "reserve", "settle", "release", "expire", "adjust", "refund"
    ]  # fmt: skip

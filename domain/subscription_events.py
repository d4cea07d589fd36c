"""The events of a Subscription: their stored shape and their effect on the subscription.

Every event is stored, published (``pinksea.subscriptions.v1``) and documented (``docs/events/``,
generated from these classes): their topics, names and fields are the stored shape, never to
be renamed or removed (tests/unit/test_event_contract.py). Beside each event is its effect, the
body the library runs when the command triggers it and again on every replay: it only mutates
(the command decided), then asserts the subscription's invariants.

``Subscription`` (domain/subscription.py) binds each class as its attribute of the same name
(where the library makes it the subscription's own event: use ``Subscription.Started``) and
each effect as the ``@event`` method that triggers it. An effect's first parameter is named
``self`` because the library calls it as that method.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from eventsourcing.domain import Aggregate
from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

from domain.invoices import InvoiceLine, MoneyReturned

if TYPE_CHECKING:
    from domain.subscription import Subscription

TESTER, ENTERPRISE = "tester", "enterprise"


class SubscriptionStatus(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    ENDED = "ended"


STATUSES = frozenset(s.value for s in SubscriptionStatus)


class CustomTerms(TypedDict):
    """Negotiated terms of an enterprise plan."""

    credits_per_month: int
    tier: str
    concurrent_jobs: int
    storage_gb: int


class Created(Aggregate.Created):
    # The library requires an explicit topic on the inherited default; we use TrialStarted.
    TOPIC = "pinksea:Subscription.Created"


class TrialStarted(Aggregate.Created):
    TOPIC = "pinksea:Subscription.TrialStarted"
    user_id: str
    period_start: datetime
    period_end: datetime


class Started(Aggregate.Event):
    TOPIC = "pinksea:Subscription.Started"
    plan: str
    external_id: str  # Stripe subscription id
    period_start: datetime
    period_end: datetime


def started(
    self: Subscription,
    plan: str,
    external_id: str,
    period_start: datetime,
    period_end: datetime,
    timestamp: datetime,
) -> None:
    assert external_id and period_start < period_end, f"start {external_id} {period_start}"
    self.plan_slug = plan
    self.external_id = external_id
    self.status = SubscriptionStatus.ACTIVE.value
    self.period_start = period_start
    self.period_end = period_end
    self.cancel_at = None
    self.custom_terms = None
    self.stripe_billed = True
    self.tester_until = self.before_tester = self.contract_since = None
    self.assert_invariants()


class PeriodRenewed(Aggregate.Event):
    TOPIC = "pinksea:Subscription.PeriodRenewed"
    invoice_id: str
    plan: str
    period_start: datetime
    period_end: datetime
    credits_mc: int


def renewed(
    self: Subscription,
    invoice_id: str,
    plan: str,
    period_start: datetime,
    period_end: datetime,
    credits_mc: int,
    timestamp: datetime,
) -> None:
    self.invoices.append(invoice_id)
    if period_end >= self.period_end:  # a late invoice of an older period moves nothing
        self.status = SubscriptionStatus.ACTIVE.value
        self.period_start = period_start
        self.period_end = period_end
    self.assert_invariants()


class PlanChanged(Aggregate.Event):
    TOPIC = "pinksea:Subscription.PlanChanged"
    from_plan: str
    to_plan: str
    actor: str
    reason: str
    custom_terms: CustomTerms | None


def plan_changed(
    self: Subscription,
    from_plan: str,
    to_plan: str,
    actor: str,
    reason: str,
    custom_terms: CustomTerms | None,
    timestamp: datetime,
) -> None:
    if to_plan == TESTER and self.plan_slug != TESTER:
        # A tester window starts (TesterPlanGranted sets its end): remember what to revert to.
        self.before_tester = (self.plan_slug, self.custom_terms, self.status)
        self.tester_until = None
    elif to_plan != TESTER:
        self.before_tester = self.tester_until = None
    if to_plan == ENTERPRISE and custom_terms is not None:
        if self.contract_since is None and not self.stripe_billed:
            self.contract_since = timestamp  # the contract's periods count from here
    elif to_plan != TESTER:  # a tester window inside a contract only pauses it
        self.contract_since = None
    self.plan_slug = to_plan
    self.custom_terms = custom_terms
    if self.status in (SubscriptionStatus.TRIALING.value, SubscriptionStatus.ENDED.value):
        # An admin-assigned plan (tester, enterprise) runs without Stripe.
        self.status = SubscriptionStatus.ACTIVE.value
    self.assert_invariants()


class CancellationScheduled(Aggregate.Event):
    TOPIC = "pinksea:Subscription.CancellationScheduled"
    effective_at: datetime


def cancellation_scheduled(self: Subscription, effective_at: datetime, timestamp: datetime) -> None:
    self.cancel_at = effective_at
    self.assert_invariants()


class CancellationRevoked(Aggregate.Event):
    TOPIC = "pinksea:Subscription.CancellationRevoked"


def cancellation_revoked(self: Subscription, timestamp: datetime) -> None:
    self.cancel_at = None
    self.assert_invariants()


class PaymentFailed(Aggregate.Event):
    TOPIC = "pinksea:Subscription.PaymentFailed"
    invoice_id: str


def payment_failed(self: Subscription, invoice_id: str, timestamp: datetime) -> None:
    self.failed_invoices.append(invoice_id)
    self.status = SubscriptionStatus.PAST_DUE.value
    self.assert_invariants()


class CustomerLinked(Aggregate.Event):
    TOPIC = "pinksea:Subscription.CustomerLinked"
    customer_id: str  # the user's one Stripe customer
    # Who linked it: "" for our Checkout and Stripe's own events (the first release's events
    # read so), else the operator, with why (a quarantined event's customer, checked by hand).
    actor: str = ""
    reason: str = ""


def customer_linked(
    self: Subscription, customer_id: str, timestamp: datetime, actor: str = "", reason: str = ""
) -> None:
    self.customer_id = customer_id
    self.assert_invariants()


class StripeSynced(Aggregate.Event):
    """The state of the Stripe subscription object as of ``object_at`` was applied; older
    snapshots that arrive late are ignored, so out-of-order deliveries converge."""

    TOPIC = "pinksea:Subscription.StripeSynced"
    object_at: datetime


def stripe_synced(self: Subscription, object_at: datetime, timestamp: datetime) -> None:
    self.stripe_synced_at = object_at
    self.assert_invariants()


class Ended(Aggregate.Event):
    TOPIC = "pinksea:Subscription.Ended"
    reason: str


def ended(self: Subscription, reason: str, timestamp: datetime) -> None:
    self.status = SubscriptionStatus.ENDED.value
    self.cancel_at = None
    self.stripe_billed = False
    self.contract_since = None
    self.assert_invariants()


class TesterPlanGranted(Aggregate.Event):
    """A tester grant's window (after the PlanChanged to tester, if there was one): the
    plan reverts when the latest window ends."""

    TOPIC = "pinksea:Subscription.TesterPlanGranted"
    grant_id: str
    valid_until: datetime


def tester_plan_granted(
    self: Subscription, grant_id: str, valid_until: datetime, timestamp: datetime
) -> None:
    self.tester_grants.append(grant_id)
    if self.tester_until is None or valid_until > self.tester_until:
        self.tester_until = valid_until
    self.assert_invariants()


class TesterPlanEnded(Aggregate.Event):
    """The tester window ended: back to the plan (and terms, and status) from before it."""

    TOPIC = "pinksea:Subscription.TesterPlanEnded"
    to_plan: str
    custom_terms: CustomTerms | None
    status: str


def tester_plan_ended(
    self: Subscription,
    to_plan: str,
    custom_terms: CustomTerms | None,
    status: str,
    timestamp: datetime,
) -> None:
    self.plan_slug = to_plan
    self.custom_terms = custom_terms
    self.status = status
    self.tester_until = self.before_tester = None
    self.assert_invariants()


class ContractPeriodStarted(Aggregate.Event):
    """A monthly period of negotiated (enterprise) terms began; its credits are granted
    in the same save."""

    TOPIC = "pinksea:Subscription.ContractPeriodStarted"
    period_start: datetime
    period_end: datetime
    credits_mc: int


def contract_period_started(
    self: Subscription,
    period_start: datetime,
    period_end: datetime,
    credits_mc: int,
    timestamp: datetime,
) -> None:
    assert period_start < period_end and credits_mc > 0, f"contract period {period_start}"
    assert self.contract_since is not None and period_start >= self.contract_since
    self.contract_period_start = self.period_start = period_start
    self.contract_period_end = self.period_end = period_end
    self.assert_invariants()


class InvoiceCredited(Aggregate.Event):
    """A paid invoice's lines were turned into credit (domain/invoices.py): ``worth_mc`` is what
    its lines are worth after the money already returned, ``delta_mc`` what this event moved
    (granted_mc - taken_back_mc, with the owed balance making up the rest), ``owed_mc`` the
    credit given back by Stripe that could not be taken (spent already), netted from the next
    grant."""

    TOPIC = "pinksea:Subscription.InvoiceCredited"
    invoice_id: str
    lines: list[InvoiceLine]
    money_cents: int
    credits_mc: int
    delta_mc: int
    granted_mc: int
    taken_back_mc: int
    owed_mc: int


def _settle_owed(
    self: Subscription, delta_mc: int, granted_mc: int, taken_back_mc: int, owed_mc: int
) -> None:
    """The owed balance after a movement of ``delta_mc``: what it did not grant or take."""
    assert granted_mc >= 0 and taken_back_mc >= 0 and owed_mc >= 0
    assert granted_mc == 0 or taken_back_mc == 0, "a movement grants or takes, not both"
    # Conservation: granted - taken - owed moves by exactly delta (README, billing policy).
    assert granted_mc - taken_back_mc - (owed_mc - self.credit_owed_mc) == delta_mc, (
        f"invoice movement {delta_mc} mc: granted {granted_mc}, taken {taken_back_mc}, "
        f"owed {self.credit_owed_mc} -> {owed_mc}"
    )
    self.credit_owed_mc = owed_mc


def invoice_credited(
    self: Subscription,
    invoice_id: str,
    lines: list[InvoiceLine],
    money_cents: int,
    credits_mc: int,
    delta_mc: int,
    granted_mc: int,
    taken_back_mc: int,
    owed_mc: int,
    timestamp: datetime,
) -> None:
    money = self.invoice_money(invoice_id)
    assert not money.paid, f"invoice {invoice_id} credited twice"
    money.paid, money.money_cents, money.credits_mc = True, money_cents, credits_mc
    assert delta_mc == money.effective_mc - money.applied_mc, f"invoice {invoice_id} delta"
    _settle_owed(self, delta_mc, granted_mc, taken_back_mc, owed_mc)
    money.applied_mc += delta_mc
    self.billed = {**(self.billed or {}), invoice_id: money}
    self.assert_invariants()


class InvoiceMoneyReturned(Aggregate.Event):
    """Stripe gave back money of an invoice (``source_id``: a credit note, or a charge whose
    refunded amount grew): the invoice's worth falls in proportion, and ``delta_mc`` (<= 0) is
    taken back, what is spent already owed."""

    TOPIC = "pinksea:Subscription.InvoiceMoneyReturned"
    invoice_id: str
    source_id: str
    by_charge: bool  # True: a refunded charge; False: a credit note
    returned: MoneyReturned
    delta_mc: int
    taken_back_mc: int
    owed_mc: int


def invoice_money_returned(
    self: Subscription,
    invoice_id: str,
    source_id: str,
    by_charge: bool,
    returned: MoneyReturned,
    delta_mc: int,
    taken_back_mc: int,
    owed_mc: int,
    timestamp: datetime,
) -> None:
    money = self.invoice_money(invoice_id)
    if by_charge:
        money.charges[source_id] = returned
    else:
        assert source_id not in money.notes, f"credit note {source_id} applied twice"
        money.notes[source_id] = returned
    assert delta_mc == money.effective_mc - money.applied_mc <= 0, f"return {source_id} delta"
    _settle_owed(self, delta_mc, 0, taken_back_mc, owed_mc)
    money.applied_mc += delta_mc
    self.billed = {**(self.billed or {}), invoice_id: money}
    self.assert_invariants()


class InvoiceCreditNoteVoided(Aggregate.Event):
    """A credit note of an unpaid invoice was voided (Stripe voids only those of open
    invoices): the money it would give back is not given back, so the invoice, once paid, is
    worth its lines again. It moves no credit now (an unpaid invoice is worth nothing yet), and
    a late delivery of the note's creation finds it voided."""

    TOPIC = "pinksea:Subscription.InvoiceCreditNoteVoided"
    invoice_id: str
    note_id: str


VOIDED_NOTE = MoneyReturned(kept_cents=0, refund_cents=0)


def invoice_credit_note_voided(
    self: Subscription, invoice_id: str, note_id: str, timestamp: datetime
) -> None:
    money = self.invoice_money(invoice_id)
    assert not money.paid, f"a credit note of paid invoice {invoice_id} voided"
    money.notes[note_id] = VOIDED_NOTE
    self.billed = {**(self.billed or {}), invoice_id: money}
    self.assert_invariants()

"""Subscription: one per user, from the trial at sign-up through paid periods to the end.

Renewing a period is what grants a month of credits; the application saves the renewal and the
grant together. Stripe drives the lifecycle (issue 7); admins assign internal and enterprise
plans with a reason, which the events keep for the audit.

Two admin plans run on the service's own clock (the expiry loop asks, the aggregate decides):
- a tester grant's window: when the last window ends, the plan reverts to the one before it
  (``TesterPlanEnded``), once;
- an enterprise plan with custom terms, assigned while no Stripe subscription runs, is a
  contract: each calendar month from its assignment is a period whose credits are granted once
  (``ContractPeriodStarted``, with a lot keyed by the subscription and the period's start).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain import subscription_events as events
from domain.errors import IdempotencyConflict, InvalidParameters, InvalidTransition
from domain.invoices import (
    InvoiceLine,
    InvoiceMoney,
    MoneyReturned,
    lines_credits_mc,
    lines_money_cents,
)
from domain.periods import contract_period
from domain.plans import GpuTier, Plan, PlanType, get_plan
from domain.subscription_events import (
    ENTERPRISE,
    STATUSES,
    TESTER,
    CustomTerms,
    SubscriptionStatus,
)
from domain.units import require_aware

__all__ = [
    "ENTERPRISE",
    "TESTER",
    "TRIAL_PERIOD",
    "CustomTerms",
    "Subscription",
    "SubscriptionStatus",
]

TRIAL_PERIOD = timedelta(days=30)


class Subscription(Aggregate):
    TOPIC = "pinksea:Subscription"

    # The events, bound here: the library makes each the subscription's own event class.
    # (For mypy, aliases of the event types; an annotation at run time would make the
    # library turn the aggregate into a dataclass.)
    if TYPE_CHECKING:
        Created: TypeAlias = events.Created
        TrialStarted: TypeAlias = events.TrialStarted
        Started: TypeAlias = events.Started
        PeriodRenewed: TypeAlias = events.PeriodRenewed
        PlanChanged: TypeAlias = events.PlanChanged
        CancellationScheduled: TypeAlias = events.CancellationScheduled
        CancellationRevoked: TypeAlias = events.CancellationRevoked
        PaymentFailed: TypeAlias = events.PaymentFailed
        CustomerLinked: TypeAlias = events.CustomerLinked
        StripeSynced: TypeAlias = events.StripeSynced
        Ended: TypeAlias = events.Ended
        TesterPlanGranted: TypeAlias = events.TesterPlanGranted
        TesterPlanEnded: TypeAlias = events.TesterPlanEnded
        ContractPeriodStarted: TypeAlias = events.ContractPeriodStarted
        InvoiceCredited: TypeAlias = events.InvoiceCredited
        InvoiceMoneyReturned: TypeAlias = events.InvoiceMoneyReturned
        InvoiceCreditNoteVoided: TypeAlias = events.InvoiceCreditNoteVoided
    else:
        Created = events.Created
        TrialStarted = events.TrialStarted
        Started = events.Started
        PeriodRenewed = events.PeriodRenewed
        PlanChanged = events.PlanChanged
        CancellationScheduled = events.CancellationScheduled
        CancellationRevoked = events.CancellationRevoked
        PaymentFailed = events.PaymentFailed
        CustomerLinked = events.CustomerLinked
        StripeSynced = events.StripeSynced
        Ended = events.Ended
        TesterPlanGranted = events.TesterPlanGranted
        TesterPlanEnded = events.TesterPlanEnded
        ContractPeriodStarted = events.ContractPeriodStarted
        InvoiceCredited = events.InvoiceCredited
        InvoiceMoneyReturned = events.InvoiceMoneyReturned
        InvoiceCreditNoteVoided = events.InvoiceCreditNoteVoided

    # Defaults for the state the events introduced after the first (so every replay has them).
    tester_until: datetime | None = None
    before_tester: tuple[str, CustomTerms | None, str] | None = None  # plan, terms, status
    stripe_billed = False  # a Stripe subscription runs (Started, until Ended)
    contract_since: datetime | None = None  # anchor of the contract's monthly periods
    contract_period_start: datetime | None = None  # the last period granted
    contract_period_end: datetime | None = None
    # Stripe's money, per invoice (domain/invoices.py), and the credit Stripe gave back that
    # could not be taken (spent already): the next grant is smaller by it.
    billed: dict[str, InvoiceMoney] | None = None
    credit_owed_mc = 0

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return ids.subscription_id(user_id)

    @event(TrialStarted)
    def __init__(
        self, user_id: str, period_start: datetime, period_end: datetime, timestamp: datetime
    ) -> None:
        self.user_id = user_id
        self.plan_slug = "trial"
        self.status = SubscriptionStatus.TRIALING.value
        self.period_start = period_start
        self.period_end = period_end
        self.external_id: str | None = None
        self.customer_id: str | None = None
        self.stripe_synced_at: datetime | None = None
        self.cancel_at: datetime | None = None
        self.custom_terms: CustomTerms | None = None
        self.invoices: list[str] = []
        self.failed_invoices: list[str] = []
        self.tester_grants: list[str] = []

    @classmethod
    def start_trial(cls, user_id: str, at: datetime) -> Subscription:
        require_aware(at)
        return cls(user_id=user_id, period_start=at, period_end=at + TRIAL_PERIOD, timestamp=at)

    # ----------------------------------------------------------------------------- queries

    @property
    def plan(self) -> Plan:
        """The plan whose entitlements apply now (custom terms applied)."""
        if self.status == SubscriptionStatus.ENDED.value:
            return get_plan("trial")
        plan = get_plan(self.plan_slug)
        if self.custom_terms is not None:
            t = self.custom_terms
            plan = plan.with_custom_terms(
                credits_per_month=t["credits_per_month"],
                tier=GpuTier(t["tier"]),
                concurrent_jobs=t["concurrent_jobs"],
                storage_gb=t["storage_gb"],
            )
        return plan

    @property
    def is_past_due(self) -> bool:
        return self.status == SubscriptionStatus.PAST_DUE.value

    def assert_invariants(self) -> None:
        """What every event leaves true (O(1)); an AssertionError here is a bug, or a history
        that breaks the rules the commands keep."""
        assert self.status in STATUSES, f"subscription status {self.status}"
        assert self.period_start < self.period_end, f"period {self.period_start} to its end"
        # Only a tester plan has a window, and something to revert to.
        assert self.tester_until is None or self.plan_slug == TESTER, self.plan_slug
        assert self.before_tester is None or self.plan_slug == TESTER, self.plan_slug
        assert (self.contract_period_start is None) == (self.contract_period_end is None)
        terms = self.custom_terms
        assert terms is None or min(terms["credits_per_month"], terms["concurrent_jobs"]) > 0
        assert self.credit_owed_mc >= 0, f"owed {self.credit_owed_mc} mc"

    def invoice_money(self, invoice_id: str) -> InvoiceMoney:
        """The account of one invoice (a fresh, empty one for an invoice not seen yet)."""
        return (self.billed or {}).get(invoice_id) or InvoiceMoney()

    def bills_customer(self, customer_id: str) -> bool:
        """Whether ``customer_id`` is the Stripe customer linked to this user."""
        return self.customer_id is not None and self.customer_id == customer_id

    def due_contract_period(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The contract period containing ``at`` if its credits are not granted yet."""
        if (
            self.contract_since is None
            or self.plan_slug != ENTERPRISE
            or self.custom_terms is None
            or self.status == SubscriptionStatus.ENDED.value
            or at < self.contract_since
        ):
            return None
        start, end = contract_period(self.contract_since, at)
        if self.contract_period_start is not None and start <= self.contract_period_start:
            return None  # granted already (periods only move forward)
        return start, end

    # ---------------------------------------------------------------------------- commands

    def start(
        self,
        *,
        plan: str,
        external_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
    ) -> bool:
        require_aware(at)
        if self.external_id == external_id and self.status != SubscriptionStatus.ENDED.value:
            return False
        target = get_plan(plan)
        if target.type is not PlanType.PAID:
            raise InvalidParameters(f"plan {plan} is not sold; assign it as an admin")
        if self.status in (SubscriptionStatus.ACTIVE.value, SubscriptionStatus.PAST_DUE.value):
            raise InvalidTransition("a subscription is already running; change its plan instead")
        if period_end <= period_start:
            raise InvalidParameters("period_end must be after period_start")
        self._started(
            plan=plan,
            external_id=external_id,
            period_start=period_start,
            period_end=period_end,
            timestamp=at,
        )
        assert self.status == SubscriptionStatus.ACTIVE.value and self.external_id == external_id
        return True

    def renew(
        self,
        *,
        invoice_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
        plan: str | None = None,
        credits_mc: int | None = None,
    ) -> int | None:
        """Record a paid period. Returns the credits (mc) to grant, or None if seen before.
        ``plan``: the plan the invoice paid for (default: the current one); ``credits_mc``:
        what its money is worth (default: the plan's month; Stripe's invoices say)."""
        assert invoice_id, "a renewal needs its invoice"
        require_aware(at)
        if invoice_id in self.invoices:
            return None
        if self.status == SubscriptionStatus.ENDED.value:
            raise InvalidTransition("the subscription has ended; start a new one")
        if self.status == SubscriptionStatus.TRIALING.value:
            raise InvalidTransition("a trial has no paid periods; start a subscription first")
        if period_end <= period_start:
            raise InvalidParameters("period_end must be after period_start")
        paid_plan = self.plan if plan is None else get_plan(plan)
        if credits_mc is None:
            credits_mc = paid_plan.credits_per_month_mc
        self._renewed(
            invoice_id=invoice_id,
            plan=paid_plan.slug,
            period_start=period_start,
            period_end=period_end,
            credits_mc=credits_mc,
            timestamp=at,
        )
        assert invoice_id in self.invoices and credits_mc >= 0
        return credits_mc

    def credit_invoice(self, *, invoice_id: str, lines: list[InvoiceLine]) -> int | None:
        """The credit (mc, signed) a paid invoice's lines move now (``InvoiceMoney``); None
        when it was credited before. The caller moves it and records it with
        ``record_invoice_credited``."""
        assert invoice_id, "an invoice needs its id"
        return self.invoice_money(invoice_id).paid_delta_mc(lines)

    def record_invoice_credited(
        self,
        *,
        invoice_id: str,
        lines: list[InvoiceLine],
        delta_mc: int,
        granted_mc: int,
        taken_back_mc: int,
        at: datetime,
    ) -> None:
        """Record what ``credit_invoice`` said to move and what moved on the account."""
        require_aware(at)
        self._invoice_credited(
            invoice_id=invoice_id,
            lines=lines,
            money_cents=lines_money_cents(lines),
            credits_mc=lines_credits_mc(lines),
            delta_mc=delta_mc,
            granted_mc=granted_mc,
            taken_back_mc=taken_back_mc,
            owed_mc=self._owed_after(delta_mc, granted_mc, taken_back_mc),
            timestamp=at,
        )
        assert self.invoice_money(invoice_id).paid

    def return_invoice_money(
        self, *, invoice_id: str, source_id: str, by_charge: bool, returned: MoneyReturned
    ) -> int | None:
        """The credit (mc, <= 0) that money given back of an invoice takes back; None when it
        was taken before (``InvoiceMoney.returned_delta_mc``)."""
        assert invoice_id, "an invoice needs its id"
        money = self.invoice_money(invoice_id)
        return money.returned_delta_mc(source_id, by_charge=by_charge, returned=returned)

    def record_invoice_money_returned(
        self,
        *,
        invoice_id: str,
        source_id: str,
        by_charge: bool,
        returned: MoneyReturned,
        delta_mc: int,
        taken_back_mc: int,
        at: datetime,
    ) -> None:
        """Record what ``return_invoice_money`` said to take and what was taken."""
        require_aware(at)
        self._invoice_money_returned(
            invoice_id=invoice_id,
            source_id=source_id,
            by_charge=by_charge,
            returned=returned,
            delta_mc=delta_mc,
            taken_back_mc=taken_back_mc,
            owed_mc=self._owed_after(delta_mc, 0, taken_back_mc),
            timestamp=at,
        )

    def void_credit_note(self, *, invoice_id: str, note_id: str, at: datetime) -> bool:
        """Forget what a credit note of an unpaid invoice would give back. False: voided
        before. InvalidTransition for a paid invoice's (Stripe voids those of open ones only)."""
        assert invoice_id and note_id
        require_aware(at)
        money = self.invoice_money(invoice_id)
        if money.notes.get(note_id) == events.VOIDED_NOTE:
            return False
        if money.paid:
            raise InvalidTransition(
                f"invoice {invoice_id} is paid: Stripe voids credit notes of open invoices only"
            )
        self._credit_note_voided(invoice_id=invoice_id, note_id=note_id, timestamp=at)
        assert self.invoice_money(invoice_id).notes[note_id] == events.VOIDED_NOTE
        return True

    def owed_to_net(self, delta_mc: int) -> int:
        """How much of a grant of ``delta_mc`` the owed balance absorbs."""
        return min(max(delta_mc, 0), self.credit_owed_mc)

    def _owed_after(self, delta_mc: int, granted_mc: int, taken_back_mc: int) -> int:
        # Conservation: granted - taken - owed moves by exactly the delta.
        owed_mc = self.credit_owed_mc + granted_mc - taken_back_mc - delta_mc
        assert owed_mc >= 0, f"owed {owed_mc} mc after moving {delta_mc} mc"
        return owed_mc

    def change_plan(
        self,
        *,
        to_plan: str,
        actor: str,
        reason: str,
        at: datetime,
        custom_terms: CustomTerms | None = None,
    ) -> bool:
        require_aware(at)
        target = get_plan(to_plan)
        if custom_terms is not None:
            GpuTier(custom_terms["tier"])  # validates the tier name
            if min(custom_terms["credits_per_month"], custom_terms["concurrent_jobs"]) <= 0:
                raise InvalidParameters("custom credits and concurrency must be positive")
        elif target.credits_per_month is None:
            raise InvalidParameters(f"plan {to_plan} needs custom terms")
        if to_plan == self.plan_slug and custom_terms == self.custom_terms:
            return False
        self._plan_changed(
            from_plan=self.plan_slug,
            to_plan=to_plan,
            actor=actor,
            reason=reason,
            custom_terms=custom_terms,
            timestamp=at,
        )
        assert self.plan_slug == to_plan and self.custom_terms == custom_terms
        return True

    def grant_tester(
        self, *, grant_id: str, valid_until: datetime, actor: str, reason: str, at: datetime
    ) -> bool:
        """Put the user on the tester plan until ``valid_until`` (a later window extends it).
        False when this grant was applied before."""
        require_aware(at)
        require_aware(valid_until, "valid_until")
        if grant_id in self.tester_grants:
            return False
        self.change_plan(to_plan=TESTER, actor=actor, reason=reason, at=at)
        self._tester_plan_granted(grant_id=grant_id, valid_until=valid_until, timestamp=at)
        assert self.plan_slug == TESTER and self.tester_until is not None
        return True

    def end_tester_plan(self, at: datetime) -> bool:
        """Revert to the plan from before the tester window once the window is over. False
        before then, after the revert, or when the plan moved on meanwhile."""
        require_aware(at)
        if self.plan_slug != TESTER or self.tester_until is None or at < self.tester_until:
            return False
        assert self.before_tester is not None, "the tester plan came without a PlanChanged"
        plan, terms, status = self.before_tester
        if status not in (SubscriptionStatus.TRIALING.value, SubscriptionStatus.ENDED.value):
            # A paid status is Stripe's word since: keep what it says now.
            status = self.status
        self._tester_plan_ended(to_plan=plan, custom_terms=terms, status=status, timestamp=at)
        assert self.plan_slug != TESTER and self.tester_until is None
        return True

    def start_contract_period(self, at: datetime) -> int | None:
        """Begin the contract period containing ``at``. Returns its credits (mc) to grant,
        or None when it began before or no contract runs. A period missed while nothing ran
        is not granted late: its credits would have expired at its end."""
        require_aware(at)
        due = self.due_contract_period(at)
        if due is None:
            return None
        credits_mc = self.plan.credits_per_month_mc
        assert credits_mc > 0
        self._contract_period_started(
            period_start=due[0], period_end=due[1], credits_mc=credits_mc, timestamp=at
        )
        return credits_mc

    def schedule_cancellation(self, at: datetime) -> bool:
        require_aware(at)
        if self.status not in (SubscriptionStatus.ACTIVE.value, SubscriptionStatus.PAST_DUE.value):
            raise InvalidTransition("only a running paid subscription can be cancelled")
        if self.cancel_at is not None:
            return False
        self._cancellation_scheduled(effective_at=self.period_end, timestamp=at)
        assert self.cancel_at == self.period_end
        return True

    def revoke_cancellation(self, at: datetime) -> bool:
        require_aware(at)
        if self.cancel_at is None:
            return False
        self._cancellation_revoked(timestamp=at)
        assert self.cancel_at is None
        return True

    def record_payment_failed(self, *, invoice_id: str, at: datetime) -> bool:
        require_aware(at)
        if invoice_id in self.failed_invoices or invoice_id in self.invoices:
            return False
        if self.status == SubscriptionStatus.ENDED.value:
            raise InvalidTransition("the subscription has ended")
        self._payment_failed(invoice_id=invoice_id, timestamp=at)
        assert self.is_past_due and invoice_id in self.failed_invoices
        return True

    def end(self, *, reason: str, at: datetime) -> bool:
        require_aware(at)
        if self.status == SubscriptionStatus.ENDED.value:
            return False
        self._ended(reason=reason, timestamp=at)
        assert self.status == SubscriptionStatus.ENDED.value and self.cancel_at is None
        return True

    def link_customer(
        self, customer_id: str, at: datetime, *, actor: str = "", reason: str = ""
    ) -> bool:
        """Link the user's one Stripe customer (``actor``: the operator who did, with their
        ``reason``; none for Checkout and Stripe's events). False: linked already."""
        assert customer_id, "a Stripe customer needs its id"
        assert bool(actor) == bool(reason), "an operator's link says why"
        require_aware(at)
        if self.customer_id == customer_id:
            return False
        if self.customer_id is not None:
            raise IdempotencyConflict("this user already has another Stripe customer")
        self._customer_linked(customer_id=customer_id, timestamp=at, actor=actor, reason=reason)
        assert self.customer_id == customer_id
        return True

    def mark_stripe_synced(self, object_at: datetime, at: datetime) -> None:
        require_aware(object_at, "object_at")
        require_aware(at)
        self._stripe_synced(object_at=object_at, timestamp=at)

    def is_stale(self, object_at: datetime) -> bool:
        return self.stripe_synced_at is not None and object_at < self.stripe_synced_at

    # ------------------------------------------------------------- event bodies (mutate only)
    # Calling one triggers its event; its body, the event's effect, is beside the event in
    # domain/subscription_events.py (and runs again on every replay).

    _started = event(Started)(events.started)
    _renewed = event(PeriodRenewed)(events.renewed)
    _plan_changed = event(PlanChanged)(events.plan_changed)
    _cancellation_scheduled = event(CancellationScheduled)(events.cancellation_scheduled)
    _cancellation_revoked = event(CancellationRevoked)(events.cancellation_revoked)
    _payment_failed = event(PaymentFailed)(events.payment_failed)
    _customer_linked = event(CustomerLinked)(events.customer_linked)
    _stripe_synced = event(StripeSynced)(events.stripe_synced)
    _ended = event(Ended)(events.ended)
    _tester_plan_granted = event(TesterPlanGranted)(events.tester_plan_granted)
    _tester_plan_ended = event(TesterPlanEnded)(events.tester_plan_ended)
    _contract_period_started = event(ContractPeriodStarted)(events.contract_period_started)
    _invoice_credited = event(InvoiceCredited)(events.invoice_credited)
    _invoice_money_returned = event(InvoiceMoneyReturned)(events.invoice_money_returned)
    _credit_note_voided = event(InvoiceCreditNoteVoided)(events.invoice_credit_note_voided)

"""Subscription: one per user, from the trial at sign-up through paid periods to the end.

Renewing a period is what grants a month of credits; the application saves the renewal and the
grant together. Stripe drives the lifecycle (issue 7); admins assign internal and enterprise
plans with a reason, which the events keep for the audit.

The rules are grouped by who has the say, each module bound here as the aggregate's methods:
the payment provider's lifecycle (start, renew, cancel, a failed payment, the end) is here;
the admin's plans, tester windows and enterprise contracts are domain/subscription_plans.py;
the money of Stripe's invoices is domain/subscription_invoices.py. The events and their
effects (the stored shape) are domain/subscription_events.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids, subscription_invoices, subscription_plans
from domain import subscription_events as events
from domain.errors import IdempotencyConflict, InvalidParameters, InvalidTransition
from domain.invoices import InvoiceMoney
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
    # (Plain names, as on GenerationJob: no code takes a Subscription event as a type, which
    # would need CreditAccount's aliases for mypy.)
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

    def bills_customer(self, customer_id: str) -> bool:
        """Whether ``customer_id`` is the Stripe customer linked to this user."""
        return self.customer_id is not None and self.customer_id == customer_id

    # ---------------------------------------------------------------------------- commands
    # The admin's plans (domain/subscription_plans.py).
    due_contract_period = subscription_plans.due_contract_period
    change_plan = subscription_plans.change_plan
    grant_tester = subscription_plans.grant_tester
    end_tester_plan = subscription_plans.end_tester_plan
    start_contract_period = subscription_plans.start_contract_period

    # The money of Stripe's invoices (domain/subscription_invoices.py).
    invoice_money = subscription_invoices.invoice_money
    credit_invoice = subscription_invoices.credit_invoice
    record_invoice_credited = subscription_invoices.record_invoice_credited
    return_invoice_money = subscription_invoices.return_invoice_money
    record_invoice_money_returned = subscription_invoices.record_invoice_money_returned
    void_credit_note = subscription_invoices.void_credit_note
    owed_to_net = subscription_invoices.owed_to_net

    # The payment provider's lifecycle.

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

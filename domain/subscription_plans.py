"""The plans an admin assigns on a subscription, and the two that run on the service's own
clock (the expiry loop asks, these decide):

- a plan change, with custom terms for a plan that needs them, keeps its actor and reason for
  the audit;
- a tester grant's window: when the last window ends, the plan reverts to the one before it
  (``TesterPlanEnded``), once;
- an enterprise plan with custom terms, assigned while no Stripe subscription runs, is a
  contract: each calendar month from its assignment is a period whose credits are granted once
  (``ContractPeriodStarted``, with a lot keyed by the subscription and the period's start).

``Subscription`` (domain/subscription.py) binds each function as its method of the same name
(hence the first parameter, ``self``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from domain.errors import InvalidParameters
from domain.periods import contract_period
from domain.plans import GpuTier, get_plan
from domain.subscription_events import ENTERPRISE, TESTER, CustomTerms, SubscriptionStatus
from domain.units import require_aware

if TYPE_CHECKING:
    from domain.subscription import Subscription


def due_contract_period(self: Subscription, at: datetime) -> tuple[datetime, datetime] | None:
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


def change_plan(
    self: Subscription,
    *,
    to_plan: str,
    actor: str,
    reason: str,
    at: datetime,
    custom_terms: CustomTerms | None = None,
) -> bool:
    """Put the subscription on ``to_plan`` (with ``custom_terms`` where the plan has none of
    its own). False when it is on that plan with those terms already."""
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
    self: Subscription,
    *,
    grant_id: str,
    valid_until: datetime,
    actor: str,
    reason: str,
    at: datetime,
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


def end_tester_plan(self: Subscription, at: datetime) -> bool:
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


def start_contract_period(self: Subscription, at: datetime) -> int | None:
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

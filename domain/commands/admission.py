"""Admission of a submitted job: accepted with its credits held, or rejected with a reason.

Apart from the job commands because it is the plan's business (entitlements, limits, the hold
as the job's time budget), not the lifecycle's; it reads the subscription and the account and
decides on the new job, saving nothing (the submission saves job and account together).
"""

from __future__ import annotations

from datetime import datetime

from domain.catalog import MODELS
from domain.credits import CreditAccount
from domain.errors import InsufficientCredits
from domain.estimation import budget_ms_for_hold, estimate_gpu_ms, hold_for_estimate
from domain.jobs import GenerationJob, JobParameters, RejectionReason
from domain.plans import Plan
from domain.subscription import Subscription


def admit(
    job: GenerationJob,
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
    at: datetime,
) -> None:
    """Accept the job and hold its credits on the account, or reject it with a reason."""
    refusal = entitlement_refusal(sub, plan, account, params, storage_used_bytes)
    if refusal is not None:
        job.reject(reason=refusal[0], detail=refusal[1], at=at)
        return
    estimate_ms = estimate_gpu_ms(
        MODELS[params.model].family,
        plan.tier,
        steps=params.steps,
        width=params.width,
        height=params.height,
        batch_size=params.batch_size,
        model=params.model,
    )
    hold_mc = hold_for_estimate(estimate_ms, plan.tier)
    try:
        account.reserve(hold_id=job.hold_id, job_id=str(job.id), amount_mc=hold_mc, at=at)
    except InsufficientCredits as e:
        job.reject(reason=RejectionReason.INSUFFICIENT_CREDITS, detail=e.detail, at=at)
        return
    job.accept(
        hold_mc=hold_mc,
        estimate_ms=estimate_ms,
        budget_ms=budget_ms_for_hold(hold_mc, plan.tier),
        at=at,
    )


def entitlement_refusal(
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
) -> tuple[RejectionReason, str] | None:
    if sub.is_past_due:
        return (
            RejectionReason.PAYMENT_FAILED,
            "your last payment failed; update your payment method in the billing portal",
        )
    required = MODELS[params.model].access
    if not plan.model_access.allows(required):
        return (
            RejectionReason.MODEL_NOT_IN_PLAN,
            f"{params.model} needs a plan with {required.value} model access; "
            f"your {plan.slug} plan has {plan.model_access.value}: upgrade to use it",
        )
    if storage_used_bytes >= plan.storage_bytes:
        return (
            RejectionReason.STORAGE_QUOTA,
            f"your images use all {plan.storage_gb} GB of your {plan.slug} plan; "
            "delete images or upgrade for more storage",
        )
    if len(account.open_holds) >= plan.max_open_jobs:
        return (
            RejectionReason.QUEUE_LIMIT,
            f"you have {plan.max_open_jobs} unfinished jobs, the most your {plan.slug} plan "
            "allows; wait for some to finish or upgrade",
        )
    return None

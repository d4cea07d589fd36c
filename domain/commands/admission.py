"""Admission of a submitted job: accepted with its credits held, or refused with a reason.

Apart from the job commands because it is the plan's business (entitlements, limits, the hold
as the job's time budget), not the lifecycle's; it reads the subscription and the account and
decides on the new job, saving nothing (the submission saves job and account together when it
is accepted, and nothing at all when it is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from domain.calibration import LearnedRate
from domain.catalog import MODELS
from domain.credits import CreditAccount
from domain.errors import AccountDeactivated, InsufficientCredits
from domain.estimation import budget_ms_for_hold, estimate_gpu_ms, hold_for_estimate, vae_encodes
from domain.job_lifecycle import RejectionReason
from domain.jobs import GenerationJob, JobParameters
from domain.plans import GpuTier, Plan
from domain.subscription import Subscription

Refusal = tuple[RejectionReason, str]
# What settled jobs like this one cost, per tier (read_models/gpu_rates.py): the caller reads
# it, since the domain does no I/O; the estimate (so the hold, stored in the event) uses it.
Learned = Mapping[GpuTier, LearnedRate]


@dataclass(frozen=True)
class Assessment:
    """What a submission of ``params`` would cost now and whether it would be accepted: the
    submission acts on it (``admit``) and a quote shows it (``quote``), so the two agree."""

    tier: GpuTier
    estimate_ms: int
    hold_mc: int  # the most the job can ever be charged: the hold is its time budget
    budget_ms: int
    available_mc: int
    refusal: Refusal | None  # None: it would be accepted

    @property
    def affordable(self) -> bool:
        return self.hold_mc <= self.available_mc


def estimate_for(params: JobParameters, tier: GpuTier, learned: Learned | None = None) -> int:
    """The estimated GPU milliseconds of ``params`` on ``tier``."""
    return estimate_gpu_ms(
        MODELS[params.model].family,
        tier,
        steps=params.effective_steps,  # img2img and inpainting skip the first steps
        width=params.width,
        height=params.height,
        batch_size=params.batch_size,
        model=params.model,
        learned=(learned or {}).get(tier),
        loras=len(params.loras or ()),
        vae_encodes=vae_encodes(params),
    )


def assess(
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
    at: datetime,
    learned: Learned | None = None,
) -> Assessment:
    """The estimate, hold and verdict of a submission of ``params`` (checked), saving nothing.
    The entitlements come first, then whether the available balance covers the hold."""
    estimate_ms = estimate_for(params, plan.tier, learned)
    hold_mc = hold_for_estimate(estimate_ms, plan.tier)
    available = account.available_mc(at)
    refusal = entitlement_refusal(sub, plan, account, params, storage_used_bytes)
    if refusal is None and hold_mc > available:
        refusal = (
            RejectionReason.INSUFFICIENT_CREDITS,
            InsufficientCredits(hold_mc, available).detail,
        )
    return Assessment(
        tier=plan.tier,
        estimate_ms=estimate_ms,
        hold_mc=hold_mc,
        budget_ms=budget_ms_for_hold(hold_mc, plan.tier),
        available_mc=available,
        refusal=refusal,
    )


def quote(
    sub: Subscription,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
    at: datetime,
    learned: Learned | None = None,
) -> Assessment:
    """What ``submit_job`` would decide for ``params`` now, recording nothing. Raises what the
    submission raises before admission: AccountDeactivated, InvalidParameters."""
    if account.deactivated:
        raise AccountDeactivated("this account is deactivated; it can run no new jobs")
    params.check()
    return assess(sub, sub.plan, account, params, storage_used_bytes, at, learned)


def admit(
    job: GenerationJob, account: CreditAccount, verdict: Assessment, at: datetime
) -> Refusal | None:
    """Hold the job's credits on the account and accept it, as ``verdict`` (an acceptance)
    said; the refusal when the lots say otherwise, with nothing changed: a refused submission
    is answered, never saved."""
    assert verdict.refusal is None, "admit only what the assessment accepted"
    assert verdict.hold_mc > 0
    try:
        account.reserve(hold_id=job.hold_id, job_id=str(job.id), amount_mc=verdict.hold_mc, at=at)
    except InsufficientCredits as e:  # assess saw enough; the lots say otherwise
        return (RejectionReason.INSUFFICIENT_CREDITS, e.detail)
    job.accept(
        hold_mc=verdict.hold_mc,
        estimate_ms=verdict.estimate_ms,
        budget_ms=verdict.budget_ms,
        at=at,
    )
    return None


def model_refusal(plan: Plan, model: str) -> Refusal | None:
    """Why ``plan`` may not run ``model``, or None when it may."""
    required = MODELS[model].access
    if plan.model_access.allows(required):
        return None
    return (
        RejectionReason.MODEL_NOT_IN_PLAN,
        f"{model} needs a plan with {required.value} model access; "
        f"your {plan.slug} plan has {plan.model_access.value}: upgrade to use it",
    )


def entitlement_refusal(
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
) -> Refusal | None:
    if sub.is_past_due:
        return (
            RejectionReason.PAYMENT_FAILED,
            "your last payment failed; update your payment method in the billing portal",
        )
    refusal = model_refusal(plan, params.model)
    if refusal is not None:
        return refusal
    if params.loras and not plan.lora_training:
        return (
            RejectionReason.MODEL_NOT_IN_PLAN,
            f"LoRAs need a plan with lora_training; your {plan.slug} plan has none: upgrade "
            "to use them",
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

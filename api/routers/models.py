"""The model catalog as the caller's plan sees it: limits, defaults, cost per tier, access.

A plain list, not a ``Page``: the catalog is a small fixed table in code (domain/catalog.py,
five models), like the plan table (GET /v1/plans); a cursor would page through constants.
"""

from __future__ import annotations

import math

from annotated_types import Ge, Le
from fastapi import APIRouter, Depends

from api.deps import CurrentUser, ServicesDep, rate_limit
from api.problems import problem_responses
from api.schemas import (
    ModelDefaults,
    ModelView,
    SizeRangeView,
    StepRange,
    TierCost,
)
from domain.calibration import calibration_for
from domain.catalog import MODELS, ModelSpec
from domain.commands.admission import estimate_for, model_refusal
from domain.estimation import hold_for_estimate
from domain.parameters import SCHEDULERS, JobParameters
from domain.plans import GpuTier, Plan

router = APIRouter(prefix="/v1/models", tags=["models"])


def _steps_range() -> tuple[int, int]:
    """The bounds of ``steps`` as the parameters' one definition declares them."""
    low = high = None
    for rule in JobParameters.model_fields["steps"].metadata:
        if isinstance(rule, Ge):
            low = rule.ge
        elif isinstance(rule, Le):
            high = rule.le
    assert isinstance(low, int) and isinstance(high, int), "steps has lost its bounds"
    return low, high


STEPS_MIN, STEPS_MAX = _steps_range()


def default_parameters(spec: ModelSpec) -> JobParameters:
    """The model's default job: its usual steps at its family's native (calibrated) size."""
    cal = calibration_for(spec.key, GpuTier.BASIC)
    side = math.isqrt(cal.base_pixels)
    side = max(spec.sizes.min_px, min(spec.sizes.max_px, side - side % spec.sizes.multiple))
    return JobParameters(
        model=spec.key, prompt="default", steps=spec.default_steps, width=side, height=side
    )


def model_view(spec: ModelSpec, plan: Plan) -> ModelView:
    params = default_parameters(spec)
    costs = []
    for tier in GpuTier:
        estimate_ms = estimate_for(params, tier)
        costs.append(
            TierCost(
                tier=tier.value,
                estimate_ms=estimate_ms,
                hold_mc=hold_for_estimate(estimate_ms, tier),
            )
        )
    refusal = model_refusal(plan, spec.key)
    return ModelView(
        key=spec.key,
        family=spec.family.value,
        access=spec.access.value,
        sizes=SizeRangeView.model_validate(spec.sizes),
        steps=StepRange(min=STEPS_MIN, max=STEPS_MAX, default=spec.default_steps),
        defaults=ModelDefaults(
            steps=params.steps,
            width=params.width,
            height=params.height,
            batch_size=params.batch_size,
            guidance_scale=params.guidance_scale,
            scheduler=params.scheduler,
        ),
        schedulers=sorted(SCHEDULERS),
        costs=costs,
        your_tier=plan.tier.value,
        allowed=refusal is None,
        reason=None if refusal is None else refusal[0].value,
        detail=None if refusal is None else refusal[1],
    )


@router.get(
    "",
    response_model=list[ModelView],
    summary="Every model, its limits and defaults, its cost per tier, and whether your plan "
    "may run it",
    description="A plain list (the catalog is a small fixed table). The costs are the "
    "estimate and hold of the model's default parameters on each tier; POST /v1/jobs/quote "
    "prices any other parameters.",
    responses=problem_responses(401, 403, 429, 503),
    dependencies=[Depends(rate_limit("query"))],
)
async def list_models(principal: CurrentUser, svc: ServicesDep) -> list[ModelView]:
    sub = await svc.command(svc.application.subscription, principal.user_id)
    return [model_view(spec, sub.plan) for spec in MODELS.values()]

"""The public plan table."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep
from api.problems import problem_responses
from api.schemas import PlanView
from read_models import queries

router = APIRouter(prefix="/v1/plans", tags=["plans"])


@router.get(
    "",
    response_model=list[PlanView],
    summary="Every plan, its price, credits and entitlements (no sign-in needed)",
    responses=problem_responses(503),
)
async def list_plans(svc: ServicesDep) -> list[PlanView]:
    return [PlanView.model_validate(plan) for plan in await queries.list_plans(svc.pool)]

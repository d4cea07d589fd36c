"""Admin actions, each an audited domain event naming the admin: credit grants (optionally
with the tester plan), adjustments, job refunds, plan assignment, deactivating and
reactivating an account; and two lookups."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Response, status

from api import problems as p
from api.deps import AdminUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.erasure import erase_personal_data
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.routers.me import ERASURE_INCOMPLETE, erasure_answer, ledger_page
from api.schemas import (
    USER_ID,
    AccountStatusRequest,
    AccountStatusResult,
    AdjustmentRequest,
    AdjustmentResult,
    ErasureView,
    GrantRequest,
    GrantResult,
    LedgerLine,
    Page,
    PlanChangeRequest,
    PlanChangeResult,
    RefundRequest,
    RefundResult,
    UserSummaryView,
)
from api.services import Services, now
from domain.application import AccountStatusResult as StatusOutcome
from domain.credits import LotSource
from domain.errors import NotFound
from domain.subscription import CustomTerms
from domain.units import credits_to_mc
from read_models import queries

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(rate_limit("admin"))],
)
ERRORS = (401, 403, 429, 503)
UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=USER_ID)]


def _actor(admin: Any) -> str:
    return f"admin:{admin.user_id}"


def _require_user(svc: Services, user_id: str) -> None:
    """On a command thread: grants must never open an account for someone not signed up."""
    try:
        svc.application.subscription(user_id)
    except NotFound:
        raise ProblemError(
            p.NOT_FOUND, f"There is no user {user_id!r}; find users with GET /v1/admin/users."
        ) from None


@router.post(
    "/grants",
    status_code=status.HTTP_201_CREATED,
    response_model=GrantResult,
    summary="Grant credits (optionally with the tester plan) to a user",
    description="The Idempotency-Key names the grant: repeating it grants nothing more.",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def grant(
    body: GrantRequest, admin: AdminUser, svc: ServicesDep, idempotency_key: IdempotencyKey = None
) -> GrantResult:
    grant_id = idempotency_key or uuid.uuid4().hex
    at = now()
    valid_from = body.valid_from or at
    try:
        amount_mc = credits_to_mc(body.credits)
        _aware(valid_from, body.valid_until)
        if body.valid_until is not None and body.valid_until <= valid_from:
            raise ValueError("valid_until must be after valid_from")
        if body.plan == "tester" and body.valid_until is None:
            raise ValueError("a tester grant needs valid_until")
    except ValueError as e:
        raise ProblemError(p.INVALID_REQUEST, p.sentence(str(e))) from None

    def run() -> Any:
        _require_user(svc, body.user_id)
        if body.plan == "tester":
            assert body.valid_until is not None
            return svc.application.grant_tester_plan(
                body.user_id,
                grant_id=grant_id,
                admin=_actor(admin),
                credits=body.credits,  # type: ignore[arg-type]  # exact Decimal, checked above
                valid_from=valid_from,
                valid_until=body.valid_until,
                reason=body.reason,
                at=at,
            )
        return svc.application.grant_credits(
            body.user_id,
            grant_id=grant_id,
            source=LotSource.ADMIN,
            amount_mc=amount_mc,
            valid_from=valid_from,
            valid_until=body.valid_until,
            actor=_actor(admin),
            reason=body.reason,
            at=at,
        )

    result = await svc.command(run)
    await _changed(svc, body.user_id)
    return GrantResult(
        grant_id=grant_id,
        user_id=body.user_id,
        amount_mc=amount_mc,
        plan=body.plan,
        changed=result.changed,
        position=result.position,
    )


@router.post(
    "/adjustments",
    status_code=status.HTTP_201_CREATED,
    response_model=AdjustmentResult,
    summary="Add or debit credits with a reason",
    description="The Idempotency-Key names the adjustment: repeating it changes nothing more.",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def adjust(
    body: AdjustmentRequest,
    admin: AdminUser,
    svc: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> AdjustmentResult:
    adjustment_id = idempotency_key or uuid.uuid4().hex
    try:
        amount_mc = credits_to_mc(body.credits)
    except ValueError as e:
        raise ProblemError(p.INVALID_REQUEST, p.sentence(str(e))) from None
    if amount_mc == 0:
        raise ProblemError(p.INVALID_REQUEST, "Give a non-zero amount of credits.")

    def run() -> Any:
        _require_user(svc, body.user_id)
        return svc.application.adjust_credits(
            body.user_id,
            adjustment_id=adjustment_id,
            amount_mc=amount_mc,
            reason=body.reason,
            actor=_actor(admin),
            at=now(),
        )

    result = await svc.command(run)
    await _changed(svc, body.user_id)
    return AdjustmentResult(
        adjustment_id=adjustment_id,
        user_id=body.user_id,
        amount_mc=amount_mc,
        changed=result.changed,
        position=result.position,
    )


@router.post(
    "/jobs/{job_id}/refund",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RefundResult,
    summary="Give a job's charge back to the lots it was drawn from",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def refund(
    job_id: UUID,
    body: RefundRequest,
    admin: AdminUser,
    svc: ServicesDep,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,  # accepted; a job is refunded at most once anyway
) -> RefundResult:
    def run() -> Any:
        try:
            svc.application.job(job_id)
        except NotFound:
            raise ProblemError(p.NOT_FOUND, f"There is no job {job_id}.") from None
        result = svc.application.refund_job(
            job_id, reason=body.reason, actor=_actor(admin), at=now()
        )
        return result, svc.application.job(job_id)

    result, job = await svc.command(run)
    await _changed(svc, job.user_id)
    await svc.job_cache.delete(str(job_id))
    background.add_task(svc.forget_job_view_once_projected, job_id, result.position)
    return RefundResult(
        job_id=job_id,
        refunded_mc=job.refunded_mc,
        changed=result.changed,
        position=result.position,
    )


@router.put(
    "/users/{user_id}/plan",
    response_model=PlanChangeResult,
    summary="Assign a plan (enterprise with custom terms)",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def set_plan(
    user_id: UserId, body: PlanChangeRequest, admin: AdminUser, svc: ServicesDep
) -> PlanChangeResult:
    terms: CustomTerms | None = None
    if body.custom_terms is not None:
        t = body.custom_terms
        terms = CustomTerms(
            credits_per_month=t.credits_per_month,
            tier=t.tier,
            concurrent_jobs=t.concurrent_jobs,
            storage_gb=t.storage_gb,
        )

    def run() -> Any:
        _require_user(svc, user_id)
        return svc.application.change_plan(
            user_id,
            to_plan=body.plan,
            actor=_actor(admin),
            reason=body.reason,
            at=now(),
            custom_terms=terms,
        )

    try:
        result = await svc.command(run)
    except ValueError as e:  # an unknown plan or tier from the domain's own checks
        raise ProblemError(p.INVALID_REQUEST, p.sentence(str(e))) from None
    svc.plans.drop(user_id)
    return PlanChangeResult(
        user_id=user_id, plan=body.plan, changed=result.changed, position=result.position
    )


@router.post(
    "/users/{user_id}/deactivate",
    response_model=AccountStatusResult,
    summary="Deactivate an account: its tokens and API keys stop, its unfinished jobs cancel",
    description="At once: the next request with any of the user's tokens or API keys is a 403 "
    "account-deactivated. Queued jobs are cancelled and their holds voided; running jobs are "
    "stopped within a step and bill the GPU time they used. Credits stay (they still expire); "
    "a Stripe subscription is not touched. Repeating it changes nothing more.",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def deactivate(
    user_id: UserId,
    body: AccountStatusRequest,
    admin: AdminUser,
    svc: ServicesDep,
) -> AccountStatusResult:
    if user_id == admin.user_id:
        raise ProblemError(
            p.INVALID_TRANSITION, "You cannot deactivate your own account; ask another admin."
        )

    def run() -> StatusOutcome:
        _require_user(svc, user_id)
        return svc.application.deactivate_user(
            user_id, reason=body.reason, actor=_actor(admin), at=now()
        )

    result = await svc.command(run)
    await _enforce(svc, user_id, result)
    await _changed(svc, user_id)  # unfinished jobs' views are never cached: nothing to drop
    return _status(user_id, result)


@router.post(
    "/users/{user_id}/reactivate",
    response_model=AccountStatusResult,
    summary="Reactivate a deactivated account",
    description="Its tokens and API keys work again at once; cancelled jobs stay cancelled. "
    "Repeating it changes nothing more.",
    responses=problem_responses(*ERRORS, 404, 409, 413, 422),
)
async def reactivate(
    user_id: UserId, body: AccountStatusRequest, admin: AdminUser, svc: ServicesDep
) -> AccountStatusResult:
    def run() -> StatusOutcome:
        _require_user(svc, user_id)
        return svc.application.reactivate_user(
            user_id, reason=body.reason, actor=_actor(admin), at=now()
        )

    result = await svc.command(run)
    await _enforce(svc, user_id, result)
    await _changed(svc, user_id)
    return _status(user_id, result)


@router.delete(
    "/users/{user_id}/personal-data",
    response_model=ErasureView,
    summary="Erase a user's personal data (their prompts, images and uploads)",
    description="As the user's own DELETE /v1/me: unfinished jobs cancelled, images and "
    "uploads deleted, the data key that sealed their prompts destroyed (the prompts read "
    '"[erased]" everywhere); their ledger stays exact. Recorded as PersonalData.Erased with '
    "you as the actor. Bounded per request as DELETE /v1/me is: while work is left it answers "
    "202 with `complete: false` and Retry-After, and the same request again goes on until it "
    "answers 200 with `complete: true`. Repeating it then changes nothing more.",
    responses={**ERASURE_INCOMPLETE, **problem_responses(*ERRORS, 404, 422)},
)
async def erase_user(
    user_id: UserId, admin: AdminUser, svc: ServicesDep, response: Response
) -> ErasureView:
    await svc.command(_require_user, svc, user_id)
    erasure = await erase_personal_data(svc, user_id, actor=_actor(admin))
    return erasure_answer(user_id, erasure, response)


async def _enforce(svc: Services, user_id: str, result: StatusOutcome) -> None:
    """Write the flag every API process checks, before answering (also on a repeat, which
    is how an admin repairs a flag that could not be written)."""
    written = await svc.deactivations.publish(
        user_id, version=result.version, deactivated=result.deactivated
    )
    if not written:
        state = "deactivation" if result.deactivated else "reactivation"
        raise ProblemError(
            p.UNAVAILABLE,
            f"The {state} is recorded, but the flag the API checks on every request could not "
            "be written (Redis did not answer); send the same request again to enforce it now.",
            headers={"Retry-After": "2"},
        )


def _status(user_id: str, result: StatusOutcome) -> AccountStatusResult:
    return AccountStatusResult(
        user_id=user_id,
        deactivated=result.deactivated,
        changed=result.changed,
        cancelled_jobs=list(result.cancelled_jobs),
        stopping_jobs=list(result.stopping_jobs),
        position=result.position,
    )


@router.get(
    "/users/{user_id}/ledger",
    response_model=Page[LedgerLine],
    summary="A user's statement lines, newest first",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(consistent("ledger"))],
)
async def user_ledger(
    user_id: UserId, admin: AdminUser, svc: ServicesDep, paging: Paging
) -> Page[LedgerLine]:
    page = await ledger_page(svc, user_id, paging.cursor, paging.limit)
    if not page.items and paging.cursor is None:
        known = await svc.pool.fetchval("SELECT 1 FROM balances WHERE user_id = $1", user_id)
        if not known:
            raise ProblemError(p.NOT_FOUND, f"There is no user {user_id!r} with a ledger.")
    return page


@router.get(
    "/users",
    response_model=Page[UserSummaryView],
    summary="Find users by id",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(consistent("subscriptions"))],
)
async def search_users(
    admin: AdminUser,
    svc: ServicesDep,
    paging: Paging,
    query: Annotated[str, Query(max_length=128, description="part of a user id")] = "",
) -> Page[UserSummaryView]:
    try:
        page = await queries.search_users(svc.pool, query, cursor=paging.cursor, limit=paging.limit)
    except ValueError as e:
        raise bad_query(e) from None
    return Page[UserSummaryView].model_validate(page)


def _aware(*times: datetime | None) -> None:
    for t in times:
        if t is not None and t.utcoffset() is None:
            raise ValueError("give times with a time zone, e.g. 2026-01-01T00:00:00Z")


async def _changed(svc: Services, user_id: str) -> None:
    svc.plans.drop(user_id)
    await svc.balance_cache.delete(user_id)

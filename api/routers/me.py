"""The caller's own account: profile and entitlements, balance, statement, usage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status

from api import problems as p
from api.deps import CurrentUser, Paging, ServicesDep, consistent, rate_limit
from api.erasure import (
    DELETIONS_PER_REQUEST,
    ERASURE_RETRY_AFTER_S,
    Erasure,
    erase_personal_data,
)
from api.failures import public_ledger_description
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import (
    BalanceView,
    ErasureView,
    LedgerLine,
    MeUpdate,
    MeView,
    Page,
    PlanView,
    SubscriptionView,
    UsageView,
)
from api.services import now
from domain.ledger_changes import LineKind
from domain.plans import GpuTier, get_plan
from read_models import queries
from workflows.notifier.preferences import get_preferences, set_low_balance_emails

router = APIRouter(prefix="/v1/me", tags=["me"])
ERRORS = (401, 403, 429, 503)
MAX_USAGE_RANGE = timedelta(days=366)


# What GET /v1/me reads: the plan, the low-balance flag, and the storage used by images (the
# jobs projection's), uploads and models. With X-Min-Position it waits for all of them.
ME_PROJECTIONS = ("subscriptions", "ledger", "jobs", "uploads", "user_models")


@router.get(
    "",
    response_model=MeView,
    summary="Your profile, plan and entitlements",
    description="With X-Min-Position (e.g. the `position` of an upload's or a model's "
    "completion, or a deletion's X-Position) `storage_used_bytes` and the rest include that "
    "change.",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent(*ME_PROJECTIONS))],
)
async def me(principal: CurrentUser, svc: ServicesDep) -> MeView:
    user = principal.user_id
    row = await queries.get_user(svc.pool, user)
    used = await queries.storage_used_bytes(svc.pool, user)
    low = await svc.pool.fetchval("SELECT low_balance FROM balances WHERE user_id = $1", user)
    prefs = await get_preferences(svc.pool, user)
    if row is not None:
        terms = row.subscription.custom_terms
        plan = get_plan(row.plan.slug)
        if terms:
            plan = plan.with_custom_terms(
                credits_per_month=int(terms["credits_per_month"]),
                tier=GpuTier(terms["tier"]),
                concurrent_jobs=int(terms["concurrent_jobs"]),
                storage_gb=int(terms["storage_gb"]),
            )
        created_at: datetime | None = row.created_at
        sub = SubscriptionView.model_validate(row.subscription)
    else:
        # Signed up a moment ago and not projected yet: the event store has the answer.
        agg = await svc.command(svc.application.subscription, user)
        plan = agg.plan
        created_at = None
        sub = SubscriptionView.model_validate(agg)
    return MeView(
        user_id=user,
        email=principal.email,
        created_at=created_at,
        plan=PlanView.model_validate(plan),
        subscription=sub,
        storage_used_bytes=used,
        storage_quota_bytes=plan.storage_bytes,
        low_balance=bool(low),
        low_balance_emails=prefs.low_balance_emails,
        notification_email=prefs.email,
        auth="api_key" if principal.via == "api_key" else "jwt",
        is_admin=principal.is_admin,
    )


@router.patch(
    "",
    response_model=MeView,
    summary="Change your account settings (low-balance e-mails)",
    description="Only the fields sent change. The e-mails go to the address of your latest "
    "sign-in (the e-mail claim of your token).",
    responses=problem_responses(*ERRORS, 413, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def update_me(body: MeUpdate, principal: CurrentUser, svc: ServicesDep) -> MeView:
    if body.low_balance_emails is None:
        raise ProblemError(
            p.INVALID_REQUEST,
            'Send at least one setting to change, e.g. {"low_balance_emails": false}.',
        )
    await set_low_balance_emails(svc.pool, principal.user_id, body.low_balance_emails, now())
    return await me(principal, svc)


# The OpenAPI entry of an erasure request that left work (this route's and the admin's).
ERASURE_INCOMPLETE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ErasureView,
        "description": "Erased in part (the key is destroyed): more is left, send the same "
        "request again",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def erasure_answer(user_id: str, erasure: Erasure, response: Response) -> ErasureView:
    """The view of one erasure request: 200 when complete, else 202 with Retry-After (the
    same request again goes on)."""
    if not erasure.complete:
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Retry-After"] = ERASURE_RETRY_AFTER_S
    return ErasureView.model_validate({"user_id": user_id, **asdict(erasure)})


@router.delete(
    "",
    response_model=ErasureView,
    summary="Erase your personal data: your prompts, board names, images and uploads",
    description="Your unfinished jobs are cancelled (holds voided), the key that sealed your "
    "prompts and board names destroyed (every one of them reads "
    '"[erased]" from now on, in every view, export and rebuild), and your images, uploads '
    "and LoRAs deleted. Your account, credits, statement and invoices stay exact (they never "
    "held what you wrote); a new submission starts with a new key. One request does a "
    f"bounded share of the deletions (at most {DELETIONS_PER_REQUEST} items): when more is "
    "left, or a file you added a moment before is not in our views yet, it answers 202 with "
    "`complete: false` and Retry-After, and the same request again "
    "goes on until it answers 200 with `complete: true`. Repeating it then changes nothing "
    "more.",
    responses={**ERASURE_INCOMPLETE, **problem_responses(*ERRORS, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def erase_me(principal: CurrentUser, svc: ServicesDep, response: Response) -> ErasureView:
    erasure = await erase_personal_data(svc, principal.user_id, actor="self")
    return erasure_answer(principal.user_id, erasure, response)


@router.get(
    "/balance",
    response_model=BalanceView,
    summary="Your credit balance and lots",
    description="Cached for a few seconds; with X-Min-Position always read fresh.",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def balance(
    principal: CurrentUser,
    svc: ServicesDep,
    min_position: Annotated[int | None, Depends(consistent("ledger"))],
) -> Any:
    user = principal.user_id
    if min_position is None:
        cached = await svc.balance_cache.get(user)
        if cached is not None:
            return cached
    at = now()
    found = await queries.get_balance(svc.pool, user, at=at)
    # Signed up a moment ago: the ledger projection opens the account within moments.
    deadline = time.monotonic() + svc.settings.read_your_writes_timeout_s
    while found is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        found = await queries.get_balance(svc.pool, user, at=at)
    if found is None:
        raise ProblemError(
            p.NOT_YET_CONSISTENT,
            "Your credit account is still being set up; retry in a moment.",
            headers={"Retry-After": "1"},
        )
    view = BalanceView.model_validate(found).model_dump(mode="json")
    await svc.balance_cache.set(user, view)
    return view


@router.get(
    "/ledger",
    response_model=Page[LedgerLine],
    summary="Your statement lines, newest first",
    description="A line per credit movement. `kind` is one of "
    + ", ".join(f"`{kind}`" for kind in LineKind)
    + "; `amount_mc` is the change of the available balance, `held_change_mc` the change of "
    "the held balance, `available_after_mc` and `held_after_mc` the balances after the line "
    "(the names of `pinksea ledger statement` too).",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("ledger"))],
)
async def ledger(principal: CurrentUser, svc: ServicesDep, paging: Paging) -> Page[LedgerLine]:
    page = await ledger_page(svc, principal.user_id, paging.cursor, paging.limit)
    # A hold released after a platform failure names it without the worker's text (the
    # admin's view of the same lines keeps it): api/failures.py.
    for line in page.items:
        line.description = public_ledger_description(line.description)
    return page


async def ledger_page(svc: Any, user: str, cursor: str | None, limit: int) -> Page[LedgerLine]:
    try:
        page = await queries.list_ledger(svc.pool, user, cursor=cursor, limit=limit)
    except ValueError as e:
        raise bad_query(e) from None
    return Page[LedgerLine].model_validate(page)


@router.get(
    "/usage",
    response_model=UsageView,
    summary="Your billed GPU usage by day or model",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def usage(
    principal: CurrentUser,
    svc: ServicesDep,
    from_: Annotated[
        datetime | None, Query(alias="from", description="start (inclusive); default: 30 days ago")
    ] = None,
    to: Annotated[datetime | None, Query(description="end (exclusive); default: now")] = None,
    group_by: Annotated[Literal["day", "model"], Query()] = "day",
) -> UsageView:
    try:
        end = to or now()
        start = from_ or end - timedelta(days=30)
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("naive time")
        if end <= start or end - start > MAX_USAGE_RANGE:
            raise ValueError("bad range")
        summary = await queries.usage_summary(svc.pool, principal.user_id, start, end, group_by)
    except (ValueError, OverflowError):
        raise ProblemError(
            p.INVALID_REQUEST,
            "Choose from and to with a time zone (e.g. 2026-01-01T00:00:00Z), from before to, "
            "at most 366 days apart.",
        ) from None
    return UsageView.model_validate(summary)

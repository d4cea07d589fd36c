"""Jobs: submit (hold credits), cancel, list, read."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response, status
from prometheus_client import Counter

from api import problems as p
from api.deps import (
    CurrentUser,
    IdempotencyKey,
    Paging,
    ServicesDep,
    consistent,
    rate_limit,
)
from api.job_views import job_view, opened_views
from api.problems import ProblemError, problem_responses
from api.routers.presets import with_preset
from api.routers.webhook_endpoints import check_webhook_url
from api.schemas import CancelAccepted, JobAccepted, JobQuote, JobRequest, JobView, Page
from api.services import Services, now
from domain.commands.admission import Assessment, Learned, quote
from domain.errors import NotFound
from domain.jobs import JobStatus
from infra import redis_keys
from read_models import gpu_rates, queries

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

AUTH_ERRORS = (401, 403, 429, 503)
# Refused submissions are saved nowhere (no job), so the API is where they are counted.
REFUSALS = Counter(
    "pinksea_api_submissions_refused_total", "Job submissions refused at admission", ["reason"]
)
JobStatusName = Annotated[JobStatus | None, Query(description="only jobs in this status")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Submit a job (text-to-image, image-to-image, inpainting)",
    description="Validates the parameters, checks the plan's entitlements and holds the "
    "estimated credits. Rejections are answered with their own problem type and saved "
    "nowhere: no job, nothing stored under the Idempotency-Key, so a retry with the same key "
    "(after a top-up, an upgrade, or when the queue drained) is decided again. An accepted "
    "job is its key's answer for 24 hours (Idempotent-Replayed: true on a replay).",
    # 404: the init_image or mask names no upload or image of yours. 422 also: an unknown
    # style_preset (naming the valid ids), or a prompt too long once its template is applied.
    responses=problem_responses(401, 402, 403, 404, 409, 413, 422, 429, 503),
    dependencies=[Depends(rate_limit("submit"))],
)
async def submit_job(
    body: JobRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    body = await with_preset(svc, body)  # the job records the expanded prompts and the id
    return await submit(svc, principal.user_id, body, idempotency_key, response)


async def submit(
    svc: Services, user: str, body: JobRequest, idempotency_key: str | None, response: Response
) -> JobAccepted:
    """The one submission path (POST /v1/jobs, and a remix of an image): the inputs checked,
    the prompts sealed, admission and the hold in the domain's command, a refusal answered as
    its problem, an accepted job with its Location (and Idempotent-Replayed on a replay)."""
    if body.webhook is not None:
        await check_webhook_url(svc, body.webhook)  # SSRF: before anything is recorded
    if body.init_image is not None or body.loras:  # the user's own, usable; LoRAs pinned
        body = await svc.command(svc.application.checked_job_inputs, user, body)
    storage = await svc.storage_used(user)
    learned = await gpu_rates.learned_rates(svc.pool, body.model, body.width, body.height)
    sealer = await svc.personal_keys.key_for(user)  # the event records the prompts sealed
    result = await svc.command(
        svc.application.submit_job,
        user,
        idempotency_key=idempotency_key or uuid.uuid4().hex,
        params=body,
        at=now(),
        storage_used_bytes=storage,
        learned=learned,
        sealer=sealer,
    )
    if result.job_id is None:  # refused: nothing was saved, so no job and no Location
        reason = result.rejection or ""
        REFUSALS.labels(reason).inc()
        raise ProblemError(
            p.REJECTIONS.get(reason, p.FORBIDDEN),
            p.sentence(result.detail or "the job was rejected"),
            reason=reason,
            position=result.position,
        )
    await svc.balance_cache.delete(user)
    response.headers["Location"] = f"/v1/jobs/{result.job_id}"
    if not result.created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobAccepted(
        job_id=result.job_id,
        status=result.status,
        hold_mc=result.hold_mc,
        budget_ms=result.budget_ms,
        position=result.position,
        replayed=not result.created,
    )


@router.post(
    "/quote",
    response_model=JobQuote,
    summary="Price a submission without submitting it",
    description="Takes the body of POST /v1/jobs and answers what that submission would do "
    "now: the estimate, the hold (which is also the most the job can ever cost: the hold is "
    "its time budget), whether your available balance covers it, and the verdict (accepted, "
    "or the rejection reason and problem type the submission would answer). It runs the "
    "submission's own admission (domain/commands/admission.py) and records nothing: no job, "
    "no event, no hold, no idempotency result.",
    responses=problem_responses(*AUTH_ERRORS, 404, 413, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def quote_job(body: JobRequest, principal: CurrentUser, svc: ServicesDep) -> JobQuote:
    user = principal.user_id
    body = await with_preset(svc, body)  # a too-long expanded prompt is the same 422 here
    if body.init_image is not None or body.loras:  # the user's own, usable; LoRAs pinned
        body = await svc.command(svc.application.checked_job_inputs, user, body)
    storage = await svc.storage_used(user)
    learned = await gpu_rates.learned_rates(svc.pool, body.model, body.width, body.height)
    verdict = await svc.command(_quote, svc, user, body, storage, learned)
    refusal = verdict.refusal
    problem = None if refusal is None else p.REJECTIONS.get(refusal[0].value, p.FORBIDDEN)
    return JobQuote(
        model=body.model,
        tier=verdict.tier.value,
        estimate_ms=verdict.estimate_ms,
        hold_mc=verdict.hold_mc,
        budget_ms=verdict.budget_ms,
        max_charge_mc=verdict.hold_mc,
        available_mc=verdict.available_mc,
        affordable=verdict.affordable,
        allowed=refusal is None,
        reason=None if refusal is None else refusal[0].value,
        detail=None if refusal is None else p.sentence(refusal[1]),
        problem_type=None if problem is None else problem.uri,
        submit_status=status.HTTP_202_ACCEPTED if problem is None else problem.status,
    )


def _quote(
    svc: Services, user_id: str, params: JobRequest, storage: int, learned: Learned
) -> Assessment:
    """On a command thread: the subscription and account as the submission reads them."""
    app = svc.application
    sub, account = app.subscription(user_id), app.account(user_id)
    return quote(sub, account, params, storage, now(), learned)


@router.get(
    "",
    response_model=Page[JobView],
    summary="List your jobs, newest first",
    responses=problem_responses(*AUTH_ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def list_jobs(
    principal: CurrentUser,
    svc: ServicesDep,
    paging: Paging,
    status: JobStatusName = None,
) -> Page[JobView]:
    try:
        page = await queries.list_jobs(
            svc.pool,
            principal.user_id,
            status=status.value if status else None,
            cursor=paging.cursor,
            limit=paging.limit,
        )
    except ValueError as e:
        raise bad_query(e) from None
    views = await opened_views(svc, principal.user_id, page.items)
    return Page[JobView](items=views, next_cursor=page.next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="One of your jobs",
    description="Queued (accepted): `queue` has its place in its tier's queue and an ETA with "
    "its basis. Completed: each image has signed `url` and `thumbnail_url`, fresh on every "
    "read (lists leave them null).",
    responses=problem_responses(*AUTH_ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_job(
    job_id: UUID,
    principal: CurrentUser,
    svc: ServicesDep,
    min_position: Annotated[int | None, Depends(consistent("jobs"))],
) -> Any:
    view = await job_view(svc, principal.user_id, job_id, cached=min_position is None)
    if view is None:
        raise job_not_found(job_id)
    return view


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CancelAccepted,
    summary="Cancel a job",
    description="Before it starts: cancelled at once, the hold released. Running: the worker "
    "stops within one step and the GPU time used up to the stop is billed.",
    responses=problem_responses(*AUTH_ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def cancel_job(
    job_id: UUID,
    principal: CurrentUser,
    svc: ServicesDep,
    idempotency_key: IdempotencyKey = None,  # accepted; a cancel is idempotent by itself
) -> CancelAccepted:
    job, result, was_dispatched = await svc.command(_cancel, svc, principal.user_id, job_id)
    if was_dispatched or job.status == JobStatus.RUNNING.value:
        # The worker checks this flag every step: a dispatched job never starts, a running
        # one stops within a step.
        await svc.redis.set(
            redis_keys.cancel_flag(svc.settings.redis_key_prefix, job_id),
            "1",
            ex=redis_keys.CANCEL_FLAG_TTL_S,
        )
    await svc.balance_cache.delete(principal.user_id)
    await svc.job_cache.delete(str(job_id))
    return CancelAccepted(
        job_id=job_id,
        status=job.status,
        cancel_requested=job.cancel_requested or job.status == JobStatus.CANCELLED.value,
        position=result.position,
    )


def _cancel(svc: Services, user_id: str, job_id: UUID) -> tuple[Any, Any, bool]:
    """On a command thread: ownership, then the cancel, then the job as it is now."""
    app = svc.application
    try:
        before = app.job(job_id)
    except NotFound:
        raise job_not_found(job_id) from None
    if before.user_id != user_id:
        raise job_not_found(job_id)
    if before.is_terminal and before.status != JobStatus.CANCELLED.value:
        raise ProblemError(
            p.INVALID_TRANSITION,
            f"The job is already {before.status}; there is nothing to cancel.",
        )
    result = app.cancel_job(job_id, now())
    return app.job(job_id), result, before.status == JobStatus.DISPATCHED.value


def job_not_found(job_id: UUID) -> ProblemError:
    return ProblemError(p.NOT_FOUND, f"You have no job {job_id}; list your jobs with GET /v1/jobs.")


def bad_query(e: ValueError) -> ProblemError:
    return ProblemError(p.INVALID_REQUEST, p.sentence(str(e)))

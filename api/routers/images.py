"""Images: list, read (with signed URLs, api/image_urls.py), delete (frees storage quota)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from uuid import UUID

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Response, status
from pydantic import AwareDatetime

from api import problems as p
from api.deps import CurrentUser, Paging, ServicesDep, consistent, rate_limit
from api.image_urls import signed_urls
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import ImageView, Page
from api.services import Services, now
from domain.application import CommandResult
from domain.errors import NotFound
from domain.jobs import ImageRecord
from read_models import models as rm
from read_models import queries

router = APIRouter(prefix="/v1/images", tags=["images"])
log = structlog.get_logger("api.images")

ImageName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
ERRORS = (401, 403, 429, 503)


def _view(svc: Services, image: rm.Image) -> ImageView:
    # Signed for CloudFront, or presigned for S3 without a CDN: local either way (no request).
    signed = signed_urls(svc.image_urls, image.key, image.thumbnail_key, now())
    return ImageView.model_validate(asdict(image) | signed)


def _not_found(name: str) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no image {name!r}; list your images with GET /v1/images."
    )


@router.get(
    "",
    response_model=Page[ImageView],
    summary="List your images, newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def list_images(
    principal: CurrentUser,
    svc: ServicesDep,
    paging: Paging,
    board_id: Annotated[
        UUID | None, Query(description="only the images on this board of yours")
    ] = None,
    created_after: Annotated[
        AwareDatetime | None, Query(description="only images created at or after this")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="only images created before this")
    ] = None,
) -> Page[ImageView]:
    try:
        page = await queries.list_images(
            svc.pool,
            principal.user_id,
            cursor=paging.cursor,
            limit=paging.limit,
            board_id=board_id,
            created_after=created_after,
            created_before=created_before,
        )
    except ValueError as e:
        raise bad_query(e) from None
    return Page[ImageView](items=[_view(svc, i) for i in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{image_name}",
    response_model=ImageView,
    summary="One of your images, with signed URLs",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("jobs"))],
)
async def get_image(image_name: ImageName, principal: CurrentUser, svc: ServicesDep) -> ImageView:
    image = await queries.get_image(svc.pool, principal.user_id, image_name)
    if image is None:
        raise _not_found(image_name)
    return _view(svc, image)


POSITION_HEADER = "X-Position"


@router.delete(
    "/{image_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your images (frees storage quota)",
    description="Recorded as the event `GenerationJob.ImageDeleted`; the response's "
    f"`{POSITION_HEADER}` header is its position: send it as `X-Min-Position` to read your "
    "images (and storage used) without it. Deleting it again is a 404.",
    responses={
        204: {
            "description": "Deleted",
            "headers": {
                POSITION_HEADER: {
                    "description": "store position of the deletion, for X-Min-Position",
                    "schema": {"type": "integer"},
                }
            },
        },
        **problem_responses(*ERRORS, 404, 422),
    },
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_image(
    image_name: ImageName, principal: CurrentUser, svc: ServicesDep, background: BackgroundTasks
) -> Response:
    user = principal.user_id
    job_id = await queries.image_job_id(svc.pool, user, image_name)  # deleted ones too
    if job_id is None:
        raise _not_found(image_name)
    result, image = await svc.command(_delete, svc, user, job_id, image_name)
    # The event is the truth: once it is recorded the image is deleted (once projected, no
    # listing shows it, no URL is signed for it, the quota no longer counts it; a rebuild keeps
    # it so). Its objects go after it, best effort: S3 deletes are idempotent, so a failure here
    # is only logged (with the keys; the event names them too, for a sweeper) and a repeated
    # DELETE, answered 404 like any deleted image, tries the objects again.
    await _delete_objects(svc, image)
    if not result.changed:
        raise _not_found(image_name)
    await svc.job_cache.delete(str(job_id))
    svc.storage.drop(user)
    background.add_task(svc.forget_job_view_once_projected, job_id, result.position)
    return Response(
        status_code=status.HTTP_204_NO_CONTENT, headers={POSITION_HEADER: str(result.position)}
    )


def _delete(
    svc: Services, user_id: str, job_id: UUID, name: str
) -> tuple[CommandResult, ImageRecord]:
    """On a command thread: the deletion, and the image as the job recorded it."""
    app = svc.application
    try:
        result = app.delete_image(job_id, user_id=user_id, name=name, at=now())
    except NotFound:
        raise _not_found(name) from None
    image = next(i for i in app.job(job_id).images if i["name"] == name)
    return result, image


async def _delete_objects(svc: Services, image: ImageRecord) -> None:
    keys = [image["key"], image["thumbnail_key"]]
    try:
        answer = await svc.blocking(
            svc.s3.delete_objects,
            Bucket=svc.settings.s3_bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
    except (BotoCoreError, ClientError) as e:
        log.warning("image objects not deleted", image=image["name"], keys=keys, error=repr(e))
        return
    # DeleteObjects answers 200 and lists the keys it could not delete.
    errors = answer.get("Errors") if isinstance(answer, dict) else None
    if errors:
        log.warning("image objects not deleted", image=image["name"], keys=keys, errors=errors)

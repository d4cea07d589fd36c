"""Images: list and filter, read (with signed URLs, api/image_urls.py, and the generation
metadata of the job that made each), star or mark intermediate, remix (a new job from an
image's parameters, through the submission path of POST /v1/jobs), delete (frees storage
quota).

A completed upload is one of the user's images too (origin ``external``, category ``user``,
named by its upload id): listed, filtered, read, flagged and deleted here like any other
(its flags are the upload's events, deleting it deletes the upload). No job made it, so it has
no metadata and cannot be remixed (a job takes it as its ``init_image``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, ValidationError

from api import problems as p
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.image_urls import signed_urls
from api.job_views import recall_parameters
from api.positions import POSITION_HEADER, POSITION_HEADERS, no_content, no_content_response
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query, submit
from api.schemas import ImageUpdate, ImageView, JobAccepted, JobRequest, Page, RemixRequest
from api.services import Services, now
from domain.application import CommandResult
from domain.errors import NotFound
from domain.job_events import ImageCategory, ImageOrigin
from domain.jobs import ImageRecord
from domain.parameters import RunParameters
from domain.uploads import Upload
from projections.consistency import first_behind
from read_models import models as rm
from read_models import queries

router = APIRouter(prefix="/v1/images", tags=["images"])

ImageName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
ERRORS = (401, 403, 429, 503)


def _view(
    svc: Services, image: rm.ImageDetail, metadata: RunParameters | None, **flags: bool
) -> ImageView:
    """The image with its URLs signed now and its ``metadata`` (recall_parameters); ``flags``:
    the owner's flags as the event store has them, when they may be newer than the row."""
    # Signed for CloudFront, or presigned for S3 without a CDN: local either way (no request).
    signed = signed_urls(svc.image_urls, image.key, image.thumbnail_key, now())
    row = {f.name: getattr(image, f.name) for f in fields(image)}  # shallow: a view reads it
    return ImageView.model_validate(row | signed | flags | {"metadata": metadata})


async def _views(svc: Services, user_id: str, images: Sequence[rm.ImageDetail]) -> list[ImageView]:
    recalled = await recall_parameters(svc, user_id, images)
    return [_view(svc, i, m) for i, m in zip(images, recalled, strict=True)]


def _not_found(name: str) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no image {name!r}; list your images with GET /v1/images."
    )


def _an_upload(name: str, refused: str) -> ProblemError:
    return ProblemError(p.INVALID_TRANSITION, f"Image {name!r} is one of your uploads: {refused}.")


async def _source(svc: Services, user_id: str, name: str) -> rm.ImageSource:
    """What made the user's image ``name``: the gallery's row, a deleted one's too (a repeated
    delete tries its objects again), else the event store's for one completed or uploaded a
    moment ago; 404 when they have no such image."""
    source = await queries.image_source(svc.pool, user_id, name)
    if source is not None:
        return source
    try:
        maker = await svc.command(svc.application.image_maker, user_id, name)
    except NotFound:
        raise _not_found(name) from None
    if isinstance(maker, Upload):
        return rm.ImageSource(job_id=None, upload_id=maker.id)
    return rm.ImageSource(job_id=maker.id, upload_id=None)


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
    starred: Annotated[
        bool | None, Query(description="true: only starred images; false: only the others")
    ] = None,
    category: Annotated[
        ImageCategory | None, Query(description="only images of this category")
    ] = None,
    origin: Annotated[ImageOrigin | None, Query(description="only images of this origin")] = None,
    is_intermediate: Annotated[
        bool, Query(description="true: only intermediate images (left out by default)")
    ] = False,
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
            starred=starred,
            category=None if category is None else category.value,
            origin=None if origin is None else origin.value,
            is_intermediate=is_intermediate,
        )
    except ValueError as e:
        raise bad_query(e) from None
    items = await _views(svc, principal.user_id, page.items)
    return Page[ImageView](items=items, next_cursor=page.next_cursor)


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
    (view,) = await _views(svc, principal.user_id, [image])
    return view


@router.patch(
    "/{image_name}",
    response_model=ImageView,
    summary="Star one of your images, or mark it intermediate",
    description="Each flag sent changes, each change recorded as an event of the image's job "
    "(`GenerationJob.ImageStarred` / `ImageUnstarred`, `ImageMarkedIntermediate` / "
    "`ImageUnmarkedIntermediate`; an upload's, of the upload: `Upload.Starred` / `Unstarred`, "
    "`Upload.MarkedIntermediate` / `UnmarkedIntermediate`); a flag left out stays. Answers the "
    f"image with its flags as recorded; the `{POSITION_HEADER}` header is the change's position "
    "(send it as `X-Min-Position` to list your images with it). An image completed or uploaded "
    "a moment before can be flagged at once: the answer waits for the gallery to show it (a "
    "503 `not-yet-consistent` with Retry-After if that takes too long; the change is recorded "
    "and the same request again answers it). Intermediate images are left "
    "out of GET /v1/images unless it asks for `is_intermediate=true`.",
    responses={
        200: {"description": "The image, with its flags", "headers": POSITION_HEADERS},
        **problem_responses(*ERRORS, 404, 422),
    },
    dependencies=[Depends(rate_limit("command"))],
)
async def update_image(
    image_name: ImageName,
    body: ImageUpdate,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
) -> ImageView:
    user = principal.user_id
    result, flags = await svc.command(_flag, svc, user, image_name, body)
    image = await queries.get_image(svc.pool, user, image_name)
    if image is None:  # completed or uploaded a moment ago: once the gallery has it
        image = await _projected_image(svc, user, image_name, result.position)
    response.headers[POSITION_HEADER] = str(result.position)
    (metadata,) = await recall_parameters(svc, user, [image])
    return _view(svc, image, metadata, **flags)


async def _projected_image(svc: Services, user_id: str, name: str, position: int) -> rm.ImageDetail:
    """The gallery's row of an image the event store has, once the read model has applied
    ``position`` (a bounded wait); 503 when it lags behind, 404 when deleted meanwhile."""
    behind = await first_behind(
        svc.pool,
        svc.settings,
        ("jobs",),
        position,
        timeout_s=svc.settings.read_your_writes_timeout_s,
    )
    if behind is not None:
        raise ProblemError(
            p.NOT_YET_CONSISTENT,
            f"Your change to image {name!r} is recorded, but the {behind} view does not show "
            "the image yet; send the same request again after the Retry-After delay.",
            headers={"Retry-After": "1", POSITION_HEADER: str(position)},
        )
    image = await queries.get_image(svc.pool, user_id, name)
    if image is None:
        raise _not_found(name)
    return image


def _flag(
    svc: Services, user_id: str, name: str, body: ImageUpdate
) -> tuple[CommandResult, dict[str, bool]]:
    """On a command thread: the flags' changes on the image's job or upload (found in the
    event store by its name, as the boards find it), then its flags as recorded."""
    app = svc.application
    try:
        maker = app.image_maker(user_id, name)
        if isinstance(maker, Upload):
            result = app.flag_upload(
                user_id,
                maker.id,
                starred=body.starred,
                is_intermediate=body.is_intermediate,
                at=now(),
            )
            flags = app.upload(user_id, maker.id).flags
        else:
            result = app.flag_image(
                maker.id,
                user_id=user_id,
                name=name,
                starred=body.starred,
                is_intermediate=body.is_intermediate,
                at=now(),
            )
            flags = app.job(maker.id).image_flags(name)
    except NotFound:  # another user's, deleted (meanwhile too) or none at all
        raise _not_found(name) from None
    return result, asdict(flags)


@router.post(
    "/{image_name}/remix",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Submit a new job from one of your images' parameters",
    description="Its generation metadata (model, prompts, sizes, steps, scheduler, guidance, "
    "init image, strength, mask, scale) with the overrides the body sends; a fresh seed "
    "unless the body sends one (send the image's `metadata.seed` to keep it). Submitted as "
    "POST /v1/jobs submits: the same admission, hold, problems and Idempotency-Key (an "
    "accepted job is its key's answer for 24 hours, Idempotent-Replayed: true on a replay). "
    "An upload has no generation metadata: remixing one is a 409 (to start from it, submit "
    "a job with its name as `init_image`).",
    # 404: no such image of yours, or its init_image or mask is gone.
    responses=problem_responses(401, 402, 403, 404, 409, 413, 422, 429, 503),
    dependencies=[Depends(rate_limit("submit"))],
)
async def remix_image(
    image_name: ImageName,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    body: Annotated[RemixRequest | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    user = principal.user_id
    image = await queries.get_image(svc.pool, user, image_name)
    if image is None:
        raise _not_found(image_name)
    (metadata,) = await recall_parameters(svc, user, [image])  # its prompts opened
    if metadata is None:
        raise _an_upload(
            image_name,
            "no job made it, so it has no parameters to remix; to start from it, POST /v1/jobs "
            f'with "init_image": "{image_name}" (image-to-image)',
        )
    recalled = metadata.model_dump(exclude={"seed"})
    overrides = {} if body is None else body.model_dump(exclude_none=True)
    try:
        request = JobRequest.model_validate(recalled | overrides)
    except ValidationError as e:  # the fields are each valid; together they may not be
        raise RequestValidationError(e.errors()) from None
    return await submit(svc, user, request, idempotency_key, response)


@router.delete(
    "/{image_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your images (frees storage quota)",
    description="Recorded as the event `GenerationJob.ImageDeleted` (an upload's: "
    "`Upload.Deleted`, as DELETE /v1/uploads/{id} records it); the response's "
    f"`{POSITION_HEADER}` header is its position: send it as `X-Min-Position` to read your "
    "images (and storage used) without it. Deleting it again is a 404.",
    responses={**no_content_response("Deleted"), **problem_responses(*ERRORS, 404, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_image(
    image_name: ImageName, principal: CurrentUser, svc: ServicesDep, background: BackgroundTasks
) -> Response:
    user = principal.user_id
    source = await _source(svc, user, image_name)  # deleted ones too
    if source.upload_id is not None:
        result, key = await svc.command(_delete_upload, svc, user, source.upload_id, image_name)
        await svc.forget_objects(key)  # after the event, best effort, as below
        svc.storage.drop(user)
        return no_content(result.position)
    assert source.job_id is not None
    job_id = source.job_id
    result, image = await svc.command(_delete, svc, user, job_id, image_name)
    # The event is the truth: once it is recorded the image is deleted (once projected, no
    # listing shows it, no URL is signed for it, the quota no longer counts it; a rebuild keeps
    # it so). Its objects go after it, best effort: S3 deletes are idempotent, so a failure here
    # is only logged (with the keys; the event names them too, for a sweeper) and a repeated
    # DELETE, answered 404 like any deleted image, tries the objects again.
    await svc.forget_objects(image["key"], image["thumbnail_key"])
    if not result.changed:
        raise _not_found(image_name)
    await svc.job_cache.delete(str(job_id))
    svc.storage.drop(user)
    background.add_task(svc.forget_job_view_once_projected, job_id, result.position)
    return no_content(result.position)


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


def _delete_upload(
    svc: Services, user_id: str, upload_id: UUID, name: str
) -> tuple[CommandResult, str]:
    """On a command thread: the upload's deletion, and its object's key. Deleted before (or
    another user's): NotFound, a 404 like any deleted image."""
    app = svc.application
    try:
        key = app.upload(user_id, upload_id).key
        result = app.delete_upload(user_id, upload_id, at=now())
    except NotFound:
        raise _not_found(name) from None
    return result, key

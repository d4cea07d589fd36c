"""Uploads: input images for image-to-image and inpainting, sent straight to S3.

``POST /v1/uploads`` records the request (``Upload.Requested``) and hands out a presigned POST
whose policy fixes the key and the content type and bounds the size by the plan
(``content-length-range``); the client POSTs the file to S3 itself. ``POST .../complete`` reads
the object back and decodes it (api/image_check.py): the domain accepts it (``Completed``: it
counts in the storage quota) or rejects it (``Rejected``: the object is deleted and the answer
is an upload-rejected problem). A job names a completed upload as ``init_image`` or ``mask``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Literal
from uuid import UUID

from botocore.exceptions import ClientError
from fastapi import APIRouter, Depends, Response, status
from pydantic import AwareDatetime, Field

from api import problems as p
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.image_check import inspect_image
from api.image_urls import expiry
from api.positions import no_content, no_content_response
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.commands.uploads import UploadResult
from domain.errors import NotFound
from domain.uploads import CONTENT_TYPES, ImageFacts, Upload, UploadStatus
from read_models import uploads as rm

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

ERRORS = (401, 403, 429, 503)
UPLOAD_URL_TTL_S = 15 * 60  # the presigned POST's lifetime
ContentType = Literal["image/png", "image/jpeg", "image/webp"]
assert set(ContentType.__args__) == set(CONTENT_TYPES)  # type: ignore[attr-defined]


class UploadRequest(Strict):
    content_type: ContentType = Field(
        description="what you will send; checked against the file's bytes on completion"
    )


class UploadTicket(View):
    upload_id: UUID
    key: str = Field(description="users/{user_id}/uploads/{upload_id}.<ext>")
    content_type: str
    size_bytes_max: int = Field(description="your plan's limit, enforced by the POST policy")
    url: str = Field(description="POST the file here as multipart/form-data")
    fields: dict[str, str] = Field(description="send these form fields first, the file last")
    expires_at: AwareDatetime
    position: int


class UploadView(View):
    upload_id: UUID
    status: UploadStatus
    content_type: str
    format: str | None = Field(description="read from the bytes: PNG, JPEG or WEBP")
    width: int | None
    height: int | None
    size_bytes: int
    size_bytes_max: int
    rejection: str | None
    url: str | None = Field(None, description="signed URL of a completed upload")
    urls_expire_at: AwareDatetime | None = None


UploadId = Annotated[UUID, Field(description="the upload_id POST /v1/uploads answered")]


def _not_found(upload_id: UUID) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no upload {upload_id}; list your uploads with GET /v1/uploads."
    )


def _view(svc: Services, upload: rm.Upload | Upload) -> UploadView:
    if isinstance(upload, Upload):  # the aggregate, as a command left it
        view = UploadView.model_validate(vars(upload) | {"upload_id": upload.id})
    else:
        view = UploadView.model_validate(upload)
    if view.status is UploadStatus.COMPLETED:
        expires_at = expiry(now())
        url = svc.image_urls.sign(upload.key, expires_at)
        view = view.model_copy(update={"url": url, "urls_expire_at": expires_at})
    return view


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadTicket,
    summary="Start an upload: a presigned POST for one image",
    description="POST the file to `url` with `fields` (multipart/form-data, the file last), "
    "then call POST /v1/uploads/{upload_id}/complete. The policy fixes the key and content "
    "type and caps the size at your plan's `size_bytes_max`. Refused (403 storage-quota) when "
    "your images and uploads use your plan's storage already.",
    # 404: the Idempotency-Key's upload was deleted (its replay finds no upload of yours).
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def request_upload(
    body: UploadRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> UploadTicket:
    user = principal.user_id
    used = await svc.storage_used(user)
    result = await svc.command(_request, svc, user, idempotency_key, body.content_type, used)
    expires_at = now().replace(microsecond=0) + timedelta(seconds=UPLOAD_URL_TTL_S)
    post = await svc.blocking(
        svc.s3.generate_presigned_post,
        Bucket=svc.settings.s3_bucket,
        Key=result.key,
        Fields={"Content-Type": result.content_type},
        Conditions=[
            {"Content-Type": result.content_type},
            ["content-length-range", 1, result.size_bytes_max],
        ],
        ExpiresIn=UPLOAD_URL_TTL_S,
    )
    response.headers["Location"] = f"/v1/uploads/{result.upload_id}"
    if not result.changed:
        response.headers["Idempotent-Replayed"] = "true"
    return UploadTicket(
        upload_id=result.upload_id,
        key=result.key,
        content_type=result.content_type,
        size_bytes_max=result.size_bytes_max,
        url=post["url"],
        fields=post["fields"],
        expires_at=expires_at,
        position=result.position,
    )


def _request(
    svc: Services, user_id: str, key: str | None, content_type: str, used_bytes: int
) -> UploadResult:
    """On a command thread: the storage quota, then the request."""
    app = svc.application
    plan = app.subscription(user_id).plan
    if used_bytes >= plan.storage_bytes:
        raise ProblemError(
            p.STORAGE_QUOTA,
            f"Your images and uploads use all {plan.storage_gb} GB of your {plan.slug} plan; "
            "delete some or upgrade for more storage.",
        )
    return app.request_upload(
        user_id, request_key=key or uuid.uuid4().hex, content_type=content_type, at=now()
    )


@router.post(
    "/{upload_id}/complete",
    response_model=UploadView,
    summary="Finish an upload: the file is checked and recorded",
    description="Reads the object back from S3 and decodes it: accepted when it is a real "
    "PNG, JPEG or WebP image of the declared type (read from its bytes), "
    "8 to 4096 px a side, within your plan's size limit. Anything else (another format, a "
    "lying content type, a truncated file, a decompression bomb) is a 422 upload-rejected "
    "problem, recorded as `Upload.Rejected`, and the object is deleted. Completing again "
    "answers the same verdict. 409: nothing was uploaded yet.",
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def complete_upload(
    upload_id: UploadId, principal: CurrentUser, svc: ServicesDep
) -> UploadView:
    user = principal.user_id
    upload = await svc.command(_owned, svc, user, upload_id)
    if upload.status == UploadStatus.PENDING.value:
        facts = await _facts(svc, upload)
        await svc.command(svc.application.complete_upload, user, upload_id, facts=facts, at=now())
        upload = await svc.command(_owned, svc, user, upload_id)
        svc.storage.drop(user)
    if upload.status == UploadStatus.REJECTED.value:
        # The verdict is recorded first; the object goes after it (idempotent: a repeat tries
        # again, and the event names the key for a sweeper).
        await svc.forget_objects(upload.key)
        raise ProblemError(
            p.UPLOAD_REJECTED,
            p.sentence(f"The upload was rejected: {upload.rejection}; start a new upload"),
            upload_id=str(upload_id),
            reason=upload.rejection,
        )
    return _view(svc, upload)


def _owned(svc: Services, user_id: str, upload_id: UUID) -> Upload:
    try:
        return svc.application.upload(user_id, upload_id)
    except NotFound:
        raise _not_found(upload_id) from None


async def _facts(svc: Services, upload: Upload) -> ImageFacts:
    """Read the object (never more than the limit and one byte) and decode it, off the loop."""
    try:
        answer = await svc.blocking(
            svc.s3.get_object, Bucket=svc.settings.s3_bucket, Key=upload.key
        )
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise ProblemError(
                p.INVALID_TRANSITION,
                "Nothing was uploaded yet; POST the file to the presigned URL, then complete.",
            ) from None
        raise
    body = answer["Body"]
    try:
        size = int(answer.get("ContentLength", 0))
        if size > upload.size_bytes_max:
            return ImageFacts(size_bytes=size)  # the domain says why; nothing is read
        data = await svc.blocking(body.read, upload.size_bytes_max + 1)
    finally:
        body.close()
    return await svc.blocking(inspect_image, data)


@router.get(
    "",
    response_model=Page[UploadView],
    summary="List your uploads, newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("uploads"))],
)
async def list_uploads(
    principal: CurrentUser, svc: ServicesDep, paging: Paging
) -> Page[UploadView]:
    try:
        page = await rm.list_uploads(
            svc.pool, principal.user_id, cursor=paging.cursor, limit=paging.limit
        )
    except ValueError as e:
        raise bad_query(e) from None
    return Page[UploadView](items=[_view(svc, u) for u in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{upload_id}",
    response_model=UploadView,
    summary="One of your uploads (a signed URL once completed)",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_upload(upload_id: UploadId, principal: CurrentUser, svc: ServicesDep) -> UploadView:
    # From the event store, not the read model: an upload just deleted is gone at once
    # (schemathesis ST301, as for boards).
    return _view(svc, await svc.command(_owned, svc, principal.user_id, upload_id))


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your uploads (frees storage quota)",
    description="Recorded as `Upload.Deleted`; the response's `X-Position` is its position. "
    "Deleting it again is a 404. Jobs already accepted with it as an input may fail.",
    responses={**no_content_response("Deleted"), **problem_responses(*ERRORS, 404, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_upload(upload_id: UploadId, principal: CurrentUser, svc: ServicesDep) -> Response:
    user = principal.user_id
    upload = await svc.command(_owned, svc, user, upload_id)
    try:
        result = await svc.command(svc.application.delete_upload, user, upload_id, at=now())
    except NotFound:
        raise _not_found(upload_id) from None
    await svc.forget_objects(upload.key)
    svc.storage.drop(user)
    return no_content(result.position)

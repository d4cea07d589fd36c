"""Uploads: input images for image-to-image and inpainting, sent straight to S3.

A verified object (api/verified_objects.py has the flow): ``POST /v1/uploads`` records the
request (``Upload.Requested``) and hands out a presigned POST whose policy also fixes the
content type; ``POST .../complete`` reads the object back and decodes it (api/image_check.py):
the domain accepts it (``Completed``: it counts in the storage quota) or rejects it
(``Rejected``: the object is deleted and the answer is an upload-rejected problem). A job names
a completed upload as ``init_image`` or ``mask``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status
from pydantic import AwareDatetime, Field

from api import verified_objects as vo
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.image_check import inspect_image
from api.image_urls import expiry
from api.positions import no_content_response
from api.problems import problem_responses
from api.routers.jobs import bad_query
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.application import PinkseaApplication
from domain.commands.uploads import UploadResult
from domain.uploads import CONTENT_TYPES, ImageFacts, Upload, UploadPurpose, UploadStatus
from read_models import uploads as rm

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

ERRORS = (401, 403, 429, 503)
ContentType = Literal["image/png", "image/jpeg", "image/webp"]
assert set(ContentType.__args__) == set(CONTENT_TYPES)  # type: ignore[attr-defined]


class UploadRequest(Strict):
    content_type: ContentType = Field(
        description="what you will send; checked against the file's bytes on completion"
    )
    purpose: UploadPurpose = Field(
        UploadPurpose.INIT,
        description="what the image is for: `init`, an image to start from (GET /v1/images "
        "lists it in category `user`), or `mask`, an inpainting mask (category `mask`)",
    )


class UploadTicket(View):
    upload_id: UUID
    key: str = Field(description="users/{user_id}/uploads/{upload_id}.<ext>")
    content_type: str
    purpose: UploadPurpose
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


class UploadCompleted(UploadView):
    position: int = Field(
        description="the verdict's store position: send it as X-Min-Position to GET /v1/me "
        "(storage used) or your uploads to read them with it"
    )


UploadId = Annotated[UUID, Field(description="the upload_id POST /v1/uploads answered")]


def _inspect(body: Any, size_bytes_max: int) -> ImageFacts:
    """Decode what S3 holds, reading never more than the limit and one byte."""
    return inspect_image(body.read(size_bytes_max + 1))


UPLOADS = vo.VerifiedObjects(
    kind=Upload,
    path=router.prefix,
    facts=ImageFacts,
    inspect=_inspect,
    complete_command=PinkseaApplication.complete_upload,
    delete_command=PinkseaApplication.delete_upload,
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
    "your images and uploads use your plan's storage already. With an `Idempotency-Key`, the "
    "key with another content type or purpose is a 409.",
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

    def request(key: str) -> UploadResult:
        return svc.application.request_upload(
            user, request_key=key, content_type=body.content_type, at=now(), purpose=body.purpose
        )

    ticket = await vo.start(
        svc, UPLOADS, user, response, idempotency_key, request, content_type=body.content_type
    )
    return UploadTicket.model_validate(
        vars(ticket)
        | {"upload_id": ticket.object_id, "content_type": body.content_type}
        | {"purpose": body.purpose}
    )


@router.post(
    "/{upload_id}/complete",
    response_model=UploadCompleted,
    summary="Finish an upload: the file is checked and recorded",
    description="Reads the object back from S3 and decodes it: accepted when it is a real "
    "PNG, JPEG or WebP image of the declared type (read from its bytes), "
    "8 to 4096 px a side, within your plan's size limit. Anything else (another format, a "
    "lying content type, a truncated file, a decompression bomb) is a 422 upload-rejected "
    "problem, recorded as `Upload.Rejected`, and the object is deleted. Completing again "
    "answers the same verdict. 409: nothing was uploaded yet. The answer's `position` is the "
    "verdict's: GET /v1/me with it as X-Min-Position counts the upload in your storage used.",
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def complete_upload(
    upload_id: UploadId, principal: CurrentUser, svc: ServicesDep
) -> UploadCompleted:
    upload, position = await vo.complete(svc, UPLOADS, principal.user_id, upload_id)
    view = _view(svc, upload)
    return UploadCompleted.model_validate(view.model_dump() | {"position": position})


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
    return _view(svc, await vo.owned(svc, UPLOADS, principal.user_id, upload_id))


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
    return await vo.delete(svc, UPLOADS, principal.user_id, upload_id)

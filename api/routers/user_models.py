"""Your models: LoRAs you upload (safetensors only) and name in jobs, on plans with
``lora_training``.

``POST /v1/models/mine`` records the request (``UserModel.Requested``) and hands out a
presigned POST whose policy fixes the key (``models/users/{user_id}/{model_id}.safetensors``)
and bounds the size (``content-length-range``); the client POSTs the file to S3 itself.
``POST .../complete`` reads the object back, hashes it and parses its safetensors header
(api/model_check.py): the domain verifies it (``Verified``: its sha256 recorded, it counts in
the storage quota) or rejects it (``Rejected``: the object is deleted and the answer is an
upload-rejected problem). A job names a verified model in ``loras``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated
from uuid import UUID

from botocore.exceptions import ClientError
from fastapi import APIRouter, Depends, Response, status
from pydantic import AwareDatetime, Field

from api import problems as p
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.model_check import inspect_lora
from api.positions import no_content, no_content_response
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.catalog import ModelFamily
from domain.commands.user_models import UserModelResult
from domain.errors import NotFound
from domain.user_models import NAME_CHARS_MAX, LoraFacts, UserModel, UserModelStatus
from read_models import user_models as rm

router = APIRouter(prefix="/v1/models/mine", tags=["models"])

ERRORS = (401, 403, 429, 503)
UPLOAD_URL_TTL_S = 15 * 60  # the presigned POST's lifetime


class UserModelRequest(Strict):
    name: str = Field(min_length=1, max_length=NAME_CHARS_MAX, pattern=r"^[^\x00]*\S[^\x00]*$")
    family: ModelFamily = Field(
        description="the base models it applies to: a job's model must be of this family"
    )


class UserModelTicket(View):
    model_id: UUID
    key: str = Field(description="models/users/{user_id}/{model_id}.safetensors")
    size_bytes_max: int = Field(description="your plan's limit, enforced by the POST policy")
    url: str = Field(description="POST the file here as multipart/form-data")
    fields: dict[str, str] = Field(description="send these form fields first, the file last")
    expires_at: AwareDatetime
    position: int


class UserModelView(View):
    model_id: UUID
    name: str
    family: ModelFamily
    status: UserModelStatus
    sha256: str | None = Field(description="the verified file's digest; a job loads only it")
    size_bytes: int
    size_bytes_max: int
    tensors: int = Field(description="LoRA tensors in the file")
    rejection: str | None


ModelId = Annotated[UUID, Field(description="the model_id POST /v1/models/mine answered")]


def _not_found(model_id: UUID) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no model {model_id}; list yours with GET /v1/models/mine."
    )


def _view(model: rm.UserModel | UserModel) -> UserModelView:
    if isinstance(model, UserModel):  # the aggregate, as a command left it
        return UserModelView.model_validate(vars(model) | {"model_id": model.id})
    return UserModelView.model_validate(model)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserModelTicket,
    summary="Start uploading a LoRA: a presigned POST for one safetensors file",
    description="POST the file to `url` with `fields` (multipart/form-data, the file last), "
    "then call POST /v1/models/mine/{model_id}/complete. Needs a plan with `lora_training` "
    "(else 403 model-not-in-plan); refused (403 storage-quota) when your images, uploads and "
    "models use your plan's storage already.",
    # 404: the Idempotency-Key's model was deleted (its replay finds no model of yours).
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def request_user_model(
    body: UserModelRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> UserModelTicket:
    user = principal.user_id
    used = await svc.storage_used(user)
    result = await svc.command(_request, svc, user, idempotency_key, body, used)
    expires_at = now().replace(microsecond=0) + timedelta(seconds=UPLOAD_URL_TTL_S)
    post = await svc.blocking(
        svc.s3.generate_presigned_post,
        Bucket=svc.settings.s3_bucket,
        Key=result.key,
        Conditions=[["content-length-range", 1, result.size_bytes_max]],
        ExpiresIn=UPLOAD_URL_TTL_S,
    )
    response.headers["Location"] = f"/v1/models/mine/{result.model_id}"
    if not result.changed:
        response.headers["Idempotent-Replayed"] = "true"
    return UserModelTicket(
        model_id=result.model_id,
        key=result.key,
        size_bytes_max=result.size_bytes_max,
        url=post["url"],
        fields=post["fields"],
        expires_at=expires_at,
        position=result.position,
    )


def _request(
    svc: Services, user_id: str, key: str | None, body: UserModelRequest, used_bytes: int
) -> UserModelResult:
    """On a command thread: the plan's flag, the storage quota, then the request."""
    app = svc.application
    plan = app.subscription(user_id).plan
    if not plan.lora_training:
        raise ProblemError(
            p.MODEL_NOT_IN_PLAN,
            f"Your {plan.slug} plan does not include LoRAs (lora_training); upgrade to upload "
            "and use your own models.",
        )
    if used_bytes >= plan.storage_bytes:
        raise ProblemError(
            p.STORAGE_QUOTA,
            f"Your images, uploads and models use all {plan.storage_gb} GB of your {plan.slug} "
            "plan; delete some or upgrade for more storage.",
        )
    return app.request_user_model(
        user_id,
        request_key=key or uuid.uuid4().hex,
        name=body.name,
        family=body.family,
        at=now(),
    )


@router.post(
    "/{model_id}/complete",
    response_model=UserModelView,
    summary="Finish a LoRA upload: the file is hashed, checked and recorded",
    description="Reads the object back from S3, hashes it (sha256) and parses its safetensors "
    "header: accepted when it is a safetensors file within your plan's size limit whose "
    "tensors are all LoRA weights (names with `lora`) of the declared family. Anything else "
    "(a pickle or any other format, whatever its name; a truncated file; full model weights; "
    "another family's LoRA) is a 422 upload-rejected problem, recorded as "
    "`UserModel.Rejected`, and the object is deleted. Completing again answers the same "
    "verdict. 409: nothing was uploaded yet.",
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def complete_user_model(
    model_id: ModelId, principal: CurrentUser, svc: ServicesDep
) -> UserModelView:
    user = principal.user_id
    model = await svc.command(_owned, svc, user, model_id)
    if model.status == UserModelStatus.PENDING.value:
        facts = await _facts(svc, model)
        app = svc.application
        await svc.command(app.complete_user_model, user, model_id, facts=facts, at=now())
        model = await svc.command(_owned, svc, user, model_id)
        svc.storage.drop(user)
    if model.status == UserModelStatus.REJECTED.value:
        # The verdict is recorded first; the object goes after it (idempotent: a repeat tries
        # again, and the event names the key for a sweeper).
        await svc.forget_objects(model.key)
        raise ProblemError(
            p.UPLOAD_REJECTED,
            p.sentence(f"The model was rejected: {model.rejection}; start a new upload"),
            model_id=str(model_id),
            reason=model.rejection,
        )
    return _view(model)


def _owned(svc: Services, user_id: str, model_id: UUID) -> UserModel:
    try:
        return svc.application.user_model(user_id, model_id)
    except NotFound:
        raise _not_found(model_id) from None


async def _facts(svc: Services, model: UserModel) -> LoraFacts:
    """Read the object (never more than the limit and one byte), hash and parse it, off the
    event loop."""
    try:
        answer = await svc.blocking(svc.s3.get_object, Bucket=svc.settings.s3_bucket, Key=model.key)
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
        if size > model.size_bytes_max:
            return LoraFacts(size_bytes=size)  # the domain says why; nothing is read
        return await svc.blocking(inspect_lora, body, model.size_bytes_max)
    finally:
        body.close()


@router.get(
    "",
    response_model=Page[UserModelView],
    summary="List your models, newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query")), Depends(consistent("user_models"))],
)
async def list_user_models(
    principal: CurrentUser, svc: ServicesDep, paging: Paging
) -> Page[UserModelView]:
    try:
        page = await rm.list_user_models(
            svc.pool, principal.user_id, cursor=paging.cursor, limit=paging.limit
        )
    except ValueError as e:
        raise bad_query(e) from None
    return Page[UserModelView](items=[_view(m) for m in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{model_id}",
    response_model=UserModelView,
    summary="One of your models",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_user_model(
    model_id: ModelId, principal: CurrentUser, svc: ServicesDep
) -> UserModelView:
    # From the event store, not the read model: a model just deleted is gone at once.
    return _view(await svc.command(_owned, svc, principal.user_id, model_id))


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete one of your models (its file too; frees storage quota)",
    description="Recorded as `UserModel.Deleted`; the response's `X-Position` is its "
    "position. Deleting it again is a 404. Jobs already accepted with it fail (the worker "
    "finds no file).",
    responses={**no_content_response("Deleted"), **problem_responses(*ERRORS, 404, 422)},
    dependencies=[Depends(rate_limit("command"))],
)
async def delete_user_model(
    model_id: ModelId, principal: CurrentUser, svc: ServicesDep
) -> Response:
    user = principal.user_id
    model = await svc.command(_owned, svc, user, model_id)
    try:
        result = await svc.command(svc.application.delete_user_model, user, model_id, at=now())
    except NotFound:
        raise _not_found(model_id) from None
    await svc.forget_objects(model.key)
    svc.storage.drop(user)
    return no_content(result.position)

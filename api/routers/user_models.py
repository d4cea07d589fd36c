"""Your models: LoRAs you upload (safetensors only) and name in jobs, on plans with
``lora_training``.

A verified object (api/verified_objects.py has the flow): ``POST /v1/models/mine`` records the
request (``UserModel.Requested``, its name sealed under the user's data key) and hands out a
presigned POST for the key ``models/users/{user_id}/{model_id}.safetensors``;
``POST .../complete`` reads the object back, hashes it and parses its safetensors header
(api/model_check.py): the domain verifies it (``Verified``: its sha256 recorded, it counts in
the storage quota) or rejects it (``Rejected``: the object is deleted and the answer is an
upload-rejected problem). A job names a verified model in ``loras``. Every view opens the
name with the user's key as it is now: ``[erased]`` once their personal data was erased.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response, status
from pydantic import AwareDatetime, Field

from api import problems as p
from api import verified_objects as vo
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, consistent, rate_limit
from api.model_check import inspect_lora
from api.positions import no_content_response
from api.problems import ProblemError, problem_responses
from api.routers.jobs import bad_query
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.application import PinkseaApplication
from domain.catalog import ModelFamily
from domain.commands.user_models import UserModelResult
from domain.personal_data import is_sealed
from domain.plans import Plan
from domain.user_models import NAME_CHARS_MAX, NAME_FIELD, LoraFacts, UserModel, UserModelStatus
from read_models import user_models as rm

router = APIRouter(prefix="/v1/models/mine", tags=["models"])

ERRORS = (401, 403, 429, 503)


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


class UserModelCompleted(UserModelView):
    position: int = Field(
        description="the verdict's store position: send it as X-Min-Position to GET /v1/me "
        "(storage used) or your models to read them with it"
    )


ModelId = Annotated[UUID, Field(description="the model_id POST /v1/models/mine answered")]


MODELS = vo.VerifiedObjects(
    kind=UserModel,
    path=router.prefix,
    facts=LoraFacts,
    inspect=inspect_lora,
    complete_command=PinkseaApplication.complete_user_model,
    delete_command=PinkseaApplication.delete_user_model,
)


def _sealed_view(model: rm.UserModel | UserModel) -> UserModelView:
    """The model's view with its name as recorded (sealed, or plaintext from before sealing)."""
    if isinstance(model, UserModel):  # the aggregate, as a command left it
        return UserModelView.model_validate(vars(model) | {"model_id": model.id})
    return UserModelView.model_validate(model)


async def _views(
    svc: Services, user_id: str, models: Sequence[rm.UserModel | UserModel]
) -> list[UserModelView]:
    """The user's models' views, each name opened with their key as it is now."""
    views = [_sealed_view(model) for model in models]
    if not any(is_sealed(view.name) for view in views):
        return views
    opener = await svc.personal_keys.opener(user_id)
    return [view.model_copy(update={"name": opener.open(NAME_FIELD, view.name)}) for view in views]


async def _view(svc: Services, user_id: str, model: UserModel) -> UserModelView:
    return (await _views(svc, user_id, [model]))[0]


def _lora_plan(plan: Plan) -> None:
    if not plan.lora_training:
        raise ProblemError(
            p.MODEL_NOT_IN_PLAN,
            f"Your {plan.slug} plan does not include LoRAs (lora_training); upgrade to upload "
            "and use your own models.",
        )


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
    data_key = await svc.personal_keys.key_for(user)  # the event records the name sealed

    def request(key: str) -> UserModelResult:
        return svc.application.request_user_model(
            user, request_key=key, name=body.name, family=body.family, at=now(), data_key=data_key
        )

    ticket = await vo.start(svc, MODELS, user, response, idempotency_key, request, gate=_lora_plan)
    return UserModelTicket.model_validate(vars(ticket) | {"model_id": ticket.object_id})


@router.post(
    "/{model_id}/complete",
    response_model=UserModelCompleted,
    summary="Finish a LoRA upload: the file is hashed, checked and recorded",
    description="Reads the object back from S3, hashes it (sha256) and parses its safetensors "
    "header: accepted when it is a safetensors file within your plan's size limit whose "
    "tensors are all LoRA weights (names with `lora`) of the declared family. Anything else "
    "(a pickle or any other format, whatever its name; a truncated file; full model weights; "
    "another family's LoRA) is a 422 upload-rejected problem, recorded as "
    "`UserModel.Rejected`, and the object is deleted. Completing again answers the same "
    "verdict. 409: nothing was uploaded yet. The answer's `position` is the verdict's: GET "
    "/v1/me with it as X-Min-Position counts the model in your storage used.",
    responses=problem_responses(*ERRORS, 404, 409, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def complete_user_model(
    model_id: ModelId, principal: CurrentUser, svc: ServicesDep
) -> UserModelCompleted:
    user = principal.user_id
    model, position = await vo.complete(svc, MODELS, user, model_id)
    view = await _view(svc, user, model)
    return UserModelCompleted.model_validate(view.model_dump() | {"position": position})


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
    items = await _views(svc, principal.user_id, page.items)
    return Page[UserModelView](items=items, next_cursor=page.next_cursor)


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
    user = principal.user_id
    return await _view(svc, user, await vo.owned(svc, MODELS, user, model_id))


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
    return await vo.delete(svc, MODELS, principal.user_id, model_id)

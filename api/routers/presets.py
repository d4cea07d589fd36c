"""The system style presets (domain/presets.py): listed, read, and named by a job's
``style_preset``, whose templates the job routes apply at submission (:func:`with_preset`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from api import problems as p
from api.deps import CurrentUser, Paging, ServicesDep, rate_limit
from api.problems import ProblemError, problem_responses
from api.schemas import Page, StylePresetView
from api.services import Services
from domain.parameters import STYLE_PRESET_ID
from domain.presets import P, apply
from read_models.queries import InvalidCursor, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/presets", tags=["presets"])

ERRORS = (401, 403, 429, 503)
PresetIdPath = Annotated[str, Path(max_length=64, pattern=STYLE_PRESET_ID)]


@router.get(
    "",
    response_model=Page[StylePresetView],
    summary="The style presets, by id",
    description="System presets (InvokeAI's default style presets): prompt templates with a "
    "positive and a negative part. Name one as a job's `style_preset`: its templates are "
    "applied to your `prompt` and `negative_prompt` when the job is submitted. The operator "
    "replaces the list with `pinksea presets sync`; a change shows within a minute.",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def list_presets(
    principal: CurrentUser, svc: ServicesDep, paging: Paging
) -> Page[StylePresetView]:
    after = ""
    if paging.cursor is not None:
        try:
            (after,) = decode_cursor(paging.cursor, "presets", str)
        except InvalidCursor as e:
            raise ProblemError(p.INVALID_REQUEST, p.sentence(str(e))) from None
    ordered = sorted((preset for preset in (await svc.presets()).presets), key=lambda x: x.id)
    rest = [preset for preset in ordered if preset.id > after]
    shown = rest[: paging.limit]
    more = len(rest) > paging.limit
    return Page[StylePresetView](
        items=[StylePresetView.model_validate(preset) for preset in shown],
        next_cursor=encode_cursor("presets", shown[-1].id) if more else None,
    )


@router.get(
    "/{preset_id}",
    response_model=StylePresetView,
    summary="One style preset",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_preset(
    preset_id: PresetIdPath, principal: CurrentUser, svc: ServicesDep
) -> StylePresetView:
    presets = await svc.presets()
    preset = presets.get(preset_id)
    if preset is None:
        raise ProblemError(
            p.NOT_FOUND,
            f"There is no style preset {preset_id!r}; list them with GET /v1/presets.",
        )
    return StylePresetView.model_validate(preset)


async def with_preset(svc: Services, params: P) -> P:
    """``params`` with its ``style_preset``'s templates applied (unchanged when it names none);
    an unknown preset or a prompt too long once expanded is a 422 invalid-parameters."""
    if params.style_preset is None:
        return params
    return apply(params, await svc.presets())

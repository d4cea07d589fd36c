"""Style presets: prompt templates with a positive and a negative part (InvokeAI's own format).

A preset is system data, not an aggregate: the operator keeps the list in the repository
(``infra/presets/style_presets.json``), ``pinksea presets sync`` checks it here and uploads it
to S3 (``system/style_presets/index.json``), and the API lists it and applies it at submission.
The fields are InvokeAI's (``invokeai/app/services/style_preset_records``: ``name``, ``type``,
``preset_data.positive_prompt``, ``preset_data.negative_prompt``) plus a stable ``id``, since a
job records the preset it named and InvokeAI's ids are random per install.

Where a template is applied: at submission, in the API, before the command (:func:`apply`). The
job's parameters then hold the expanded ``prompt`` and ``negative_prompt`` and the preset's id
(``style_preset``), so the worker runs and the estimator prices exactly what is recorded, and
nothing downstream knows presets exist. A template is expanded as InvokeAI's web UI expands it
(``buildPresetModifiedPrompt``): its ``{prompt}`` is replaced by the user's text; a template
without one is appended to the user's text after a space. Pure data, no I/O.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from domain.errors import InvalidParameters
from domain.parameters import MAX_PROMPT_CHARS, NO_NUL, STYLE_PRESET_ID, JobParameters

PLACEHOLDER = "{prompt}"
# The operator's list is small (InvokeAI ships 18); the cap keeps GET /v1/presets and every
# API process's copy of the list bounded whatever the file says.
PRESETS_MAX = 200
PresetId = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=STYLE_PRESET_ID, examples=["photography-general"]),
]

P = TypeVar("P", bound=JobParameters)


class PresetData(BaseModel):
    """The two templates (InvokeAI's ``PresetData``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    positive_prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        pattern=NO_NUL,
        description=f"the prompt's template; `{PLACEHOLDER}` is replaced by your prompt "
        "(without one, the template is appended to it)",
    )
    negative_prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        pattern=NO_NUL,
        description=f"the negative prompt's template; `{PLACEHOLDER}` is replaced by your "
        "negative prompt (without one, the template is appended to it)",
    )

    @model_validator(mode="after")
    def _one_placeholder_at_most(self) -> PresetData:
        for name in ("positive_prompt", "negative_prompt"):
            if getattr(self, name).count(PLACEHOLDER) > 1:
                raise ValueError(f"{name} has more than one {PLACEHOLDER}")
        return self


class StylePreset(BaseModel):
    """One system preset. ``type`` is always InvokeAI's ``default`` (system presets); user
    presets are not offered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PresetId
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    type: Literal["default"] = "default"
    preset_data: PresetData


class PresetList(BaseModel):
    """The whole list as stored (and as the repository's file holds it): ids unique, at most
    :data:`PRESETS_MAX`, in the file's order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    presets: tuple[StylePreset, ...] = Field(max_length=PRESETS_MAX)

    @model_validator(mode="after")
    def _unique_ids(self) -> PresetList:
        ids = [p.id for p in self.presets]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"preset ids must be unique; repeated: {', '.join(repeated)}")
        return self

    def get(self, preset_id: str) -> StylePreset | None:
        return next((p for p in self.presets if p.id == preset_id), None)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.presets]


_LIST = TypeAdapter(PresetList)


def parse_presets(raw: bytes | str) -> PresetList:
    """The list from its JSON (the repository's file or the stored index); ValueError saying
    what is wrong otherwise."""
    try:
        return _LIST.validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'the document'}: {err['msg']}"
            for err in e.errors()[:10]
        )
        raise ValueError(f"not a valid style preset list: {problems}") from None


def expand(template: str, text: str) -> str:
    """InvokeAI's expansion: ``{prompt}`` replaced by ``text``, or ``text`` then the template;
    the ends trimmed (an empty negative prompt leaves no leading space)."""
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, text, 1).strip()
    return f"{text} {template}".strip()


def apply(params: P, presets: PresetList) -> P:
    """``params`` with its named preset's templates applied, the id kept in ``style_preset``.
    InvalidParameters when the preset is unknown (naming the valid ids) or when an expanded
    prompt is longer than the parameters allow."""
    preset_id = params.style_preset
    if preset_id is None:
        return params
    preset = presets.get(preset_id)
    if preset is None:
        valid = ", ".join(presets.ids) or "none are installed"
        raise InvalidParameters(
            f"style_preset {preset_id!r} is unknown; choose one of GET /v1/presets: {valid}"
        )
    prompt = expand(preset.preset_data.positive_prompt, params.prompt)
    negative = expand(preset.preset_data.negative_prompt, params.negative_prompt)
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidParameters(
                f"{name} is {len(text)} characters with style preset {preset_id!r} applied; "
                f"at most {MAX_PROMPT_CHARS}: shorten it by {len(text) - MAX_PROMPT_CHARS}"
            )
    expanded = type(params).model_validate(
        {**params.model_dump(), "prompt": prompt, "negative_prompt": negative}
    )
    assert expanded.style_preset == preset_id, "the expanded parameters lost their preset"
    return expanded

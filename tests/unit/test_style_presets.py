"""Style presets as data (domain/presets.py): the shipped list's rules, InvokeAI's expansion, and
a job's parameters with a preset applied."""

from __future__ import annotations

import json

import pytest

from domain.errors import InvalidParameters
from domain.parameters import MAX_PROMPT_CHARS, JobParameters
from domain.presets import (
    PRESETS_MAX,
    PresetData,
    PresetList,
    StylePreset,
    apply,
    expand,
    parse_presets,
)
from infra import style_presets

TINY = {"model": "tiny-sd", "prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64}


def _preset(
    preset_id: str, positive: str = "{prompt}, oil", negative: str = "blurry"
) -> StylePreset:
    return StylePreset(
        id=preset_id,
        name=preset_id.title(),
        preset_data=PresetData(positive_prompt=positive, negative_prompt=negative),
    )


def _raw(*presets: dict[str, object]) -> str:
    return json.dumps({"presets": list(presets)})


def test_the_shipped_list_is_invokeais_defaults_with_stable_ids() -> None:
    shipped = style_presets.read_file()
    assert len(shipped.presets) == 18 and shipped.get("photography-general") is not None
    assert all(p.type == "default" for p in shipped.presets)
    assert all("{prompt}" in p.preset_data.positive_prompt for p in shipped.presets)


@pytest.mark.parametrize(
    ("template", "text", "expanded"),
    [
        ("{prompt}, oil painting", "a sea", "a sea, oil painting"),
        ("concept art of a {prompt}. painterly", "ship", "concept art of a ship. painterly"),
        ("oil painting", "a sea", "a sea oil painting"),  # no {prompt}: appended after a space
        ("blurry, sketch", "", "blurry, sketch"),  # an empty text leaves no leading space
        ("{prompt}", "", ""),
    ],
)
def test_a_template_expands_as_invokeai_expands_it(template: str, text: str, expanded: str) -> None:
    assert expand(template, text) == expanded


def test_a_job_records_the_expanded_prompts_and_the_preset_id() -> None:
    presets = PresetList(presets=(_preset("oil"),))
    params = JobParameters(**TINY, negative_prompt="text", style_preset="oil")
    applied = apply(params, presets)
    assert (applied.prompt, applied.negative_prompt) == ("a lighthouse, oil", "text blurry")
    assert applied.as_event_data()["style_preset"] == "oil"
    assert applied.steps == params.steps and applied.model == params.model
    plain = JobParameters(**TINY)
    assert apply(plain, presets) is plain
    assert "style_preset" not in plain.as_event_data()  # an old job's fingerprint is unchanged


def test_an_unknown_preset_names_the_valid_ids() -> None:
    presets = PresetList(presets=(_preset("oil"), _preset("anime")))
    with pytest.raises(InvalidParameters, match=r"'nope' is unknown.*oil, anime"):
        apply(JobParameters(**TINY, style_preset="nope"), presets)
    with pytest.raises(InvalidParameters, match="none are installed"):
        apply(JobParameters(**TINY, style_preset="nope"), PresetList(presets=()))


def test_an_expanded_prompt_past_the_limit_is_refused_with_by_how_much() -> None:
    presets = PresetList(presets=(_preset("long", negative="n" * MAX_PROMPT_CHARS),))
    with pytest.raises(InvalidParameters, match=r"negative_prompt is 2005 .* shorten it by 5"):
        apply(JobParameters(**TINY, negative_prompt="four", style_preset="long"), presets)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_raw(*[_preset("a").model_dump()] * 2), "unique; repeated: a"),
        (_raw({**_preset("a").model_dump(), "id": "Not An Id"}), "presets.0.id"),
        (
            _raw(
                {
                    **_preset("a").model_dump(),
                    "preset_data": {
                        "positive_prompt": "{prompt} and {prompt}",
                        "negative_prompt": "",
                    },
                }
            ),
            "more than one",
        ),
        (_raw({**_preset("a").model_dump(), "type": "user"}), "presets.0.type"),
        (_raw(*[_preset(f"p{i}").model_dump() for i in range(PRESETS_MAX + 1)]), "at most"),
        ("[]", "the document: Input should be an object"),
        ("not json", "not a valid style preset list"),
    ],
)
def test_a_list_that_breaks_a_rule_is_refused_saying_which(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match="not a valid style preset list") as refused:
        parse_presets(raw)
    assert problem in str(refused.value)

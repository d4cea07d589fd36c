"""Upscale jobs' parameters: an upscaler model needs an init image and its own scale, makes one
pass, and refuses an output past the pixel cap before admission; the other models refuse a
scale. Priced by output pixels at one step."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain.catalog import MODELS
from domain.commands.admission import estimate_for
from domain.errors import InvalidParameters
from domain.parameters import UPSCALE_OUTPUT_PIXELS_MAX, JobParameters
from domain.plans import GpuTier

REF = str(uuid.uuid4())


def _params(**overrides: Any) -> JobParameters:
    fields: dict[str, Any] = {
        "model": "tiny-upscaler-x4",
        "prompt": "sharper",
        "steps": 1,
        "width": 256,
        "height": 256,
        "init_image": REF,
        "scale": 4,
    }
    return JobParameters(**(fields | overrides))


def _problems(**overrides: Any) -> str:
    with pytest.raises(InvalidParameters) as caught:
        _params(**overrides).check()
    return str(caught.value)


def test_an_upscale_job_checks_and_runs_one_step() -> None:
    params = _params()
    params.check()
    assert params.effective_steps == 1
    assert MODELS["tiny-upscaler-x4"].upscale == 4 and MODELS["realesrgan-x2"].upscale == 2
    _params(model="realesrgan-x2", scale=2, width=1024, height=512).check()


def test_an_upscaler_needs_its_input_and_its_own_scale() -> None:
    assert "send the init_image" in _problems(init_image=None)
    assert "upscales x4: send scale 4" in _problems(scale=2)
    assert "upscales x4: send scale 4" in _problems(scale=None)
    assert "no strength or mask" in _problems(strength=0.5)
    assert "one pass, send steps 1" in _problems(steps=4)
    assert "batch_size 1" in _problems(batch_size=2)
    # The output must be a whole number of 8-pixel tiles of input: multiples of 32 at x4.
    assert "multiple of 32" in _problems(width=250)


def test_a_huge_output_is_refused_before_admission() -> None:
    message = _problems(model="realesrgan-x4", width=4096, height=4096)
    assert f"at most {UPSCALE_OUTPUT_PIXELS_MAX}" in message and "16777216 pixels" in message
    _params(model="realesrgan-x4", width=4096, height=2048).check()  # exactly the cap


def test_other_models_refuse_a_scale() -> None:
    plain = {"model": "tiny-sd", "steps": 4, "width": 64, "height": 64, "init_image": None}
    assert "scale needs an upscaler model" in _problems(**plain)


def test_an_upscale_is_priced_by_output_pixels() -> None:
    small = estimate_for(_params(width=256, height=256), GpuTier.BASIC)
    large = estimate_for(_params(width=512, height=512), GpuTier.BASIC)
    assert 0 < small < large
    # One step however the job was sent: the hold never counts diffusion steps for it.
    assert _params().effective_steps == 1


def test_text_to_image_parameters_are_stored_as_before() -> None:
    plain = JobParameters(model="tiny-sd", prompt="a sea", steps=4, width=64, height=64)
    assert "scale" not in plain.as_event_data()
    assert _params().as_event_data()["scale"] == 4


def test_the_strength_a_job_runs_with() -> None:
    """Read back (an image's metadata): an upscale takes none, as text-to-image does; image to
    image and inpainting their defaults when none was sent, else the one sent."""
    assert _params().run_strength is None
    assert _params(model="tiny-sd", scale=None, init_image=None).run_strength is None
    assert _params(model="tiny-sd", scale=None).run_strength == 0.8
    assert _params(model="tiny-sd", scale=None, strength=0.3).run_strength == 0.3
    inpainting = _params(model="tiny-sd-inpaint", scale=None, mask=REF)
    assert inpainting.run_strength == 1.0 and inpainting.strength is None

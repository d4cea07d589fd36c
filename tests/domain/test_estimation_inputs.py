"""What a job's inputs add to its estimate (issue 15): each LoRA on every step, and the VAE
encode of an image-to-image job's init image (and an inpainting job's masked image); the hold
still covers the whole estimate."""

from __future__ import annotations

from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from domain import calibration_data
from domain.calibration import (
    CALIBRATION,
    HAND_ESTIMATE,
    LEARNED_SAMPLES_MIN,
    MEASURED,
    DeviceClass,
    LearnedRate,
    calibration_for,
    estimate_from,
    inputs_ms,
)
from domain.catalog import MODELS
from domain.commands.admission import estimate_for
from domain.estimation import (
    budget_ms_for_hold,
    estimate_gpu_ms,
    hold_for_estimate,
    vae_encodes,
)
from domain.parameters import LORAS_MAX, JobParameters, LoraRef
from domain.plans import GpuTier

UPLOAD = "3f2b8c1e-9d4a-4e2f-8a6b-1c2d3e4f5a6b"
MASK = "7a1c9e2b-4d3f-4b5a-9c8d-0e1f2a3b4c5d"
DIFFUSION_MODELS = sorted(m for m, spec in MODELS.items() if spec.upscale == 0)

work = {
    "model": st.sampled_from(sorted(MODELS)),
    "tier": st.sampled_from(list(GpuTier)),
    "steps": st.integers(1, 150),
    "side": st.integers(1, 128).map(lambda n: n * 16),
    "batch": st.integers(1, 8),
}


def test_every_row_prices_the_inputs_and_says_where_the_numbers_come_from() -> None:
    for row in calibration_data.ROWS:
        assert row["lora_step_ms"] > 0 and row["vae_encode_ms"] > 0, row
        assert row["inputs_source"] in (MEASURED, HAND_ESTIMATE)
        if row["inputs_source"] == MEASURED:
            assert "bench.consumer_overhead" in row["inputs_measured"]
    # No GPU has measured these terms yet: only the CPU row of the tiny model says measured.
    measured = {
        (r["key"], r["device"]) for r in calibration_data.ROWS if r["inputs_source"] == MEASURED
    }
    assert measured == {("tiny-sd", "cpu")}


@given(**work, loras=st.integers(0, LORAS_MAX - 1))
def test_the_estimate_grows_with_every_lora(
    model: str, tier: GpuTier, steps: int, side: int, batch: int, loras: int
) -> None:
    cal = calibration_for(model, tier)
    size = {"steps": steps, "width": side, "height": side, "batch_size": batch}
    fewer = estimate_from(cal, **size, loras=loras)
    more = estimate_from(cal, **size, loras=loras + 1)
    # Every step of every image carries the adapter's matmuls: at least one LoRA's work
    # (rounded down, then scaled by the contention, rounded down), never less.
    one_lora_ms = cal.lora_step_ms * steps * side * side * batch // cal.base_pixels
    assert more - fewer >= one_lora_ms * cal.contention_pct // 100 >= 0
    if one_lora_ms > 0:
        assert more > fewer


@given(**work, encodes=st.integers(1, 2))
def test_the_estimate_covers_the_vae_encode(
    model: str, tier: GpuTier, steps: int, side: int, batch: int, encodes: int
) -> None:
    cal = calibration_for(model, tier)
    size = {"steps": steps, "width": side, "height": side, "batch_size": batch}
    plain = estimate_from(cal, **size)
    encoded = estimate_from(cal, **size, vae_encodes=encodes)
    assert encoded == plain + inputs_ms(cal, **size, loras=0, vae_encodes=encodes)
    assert encoded > plain


@given(
    model=st.sampled_from(DIFFUSION_MODELS),
    tier=st.sampled_from(list(GpuTier)),
    steps=st.integers(1, 150),
    strength=st.integers(1, 10).map(lambda n: n / 10),
    side=st.integers(1, 64).map(lambda n: n * 16),
    loras=st.integers(0, LORAS_MAX),
    inpaint=st.booleans(),
)
def test_the_hold_covers_an_image_to_image_job_with_its_loras(
    model: str,
    tier: GpuTier,
    steps: int,
    strength: float,
    side: int,
    loras: int,
    inpaint: bool,
) -> None:
    lora_refs = tuple(LoraRef(id=uuid4()) for _ in range(loras)) or None
    params = JobParameters(
        model=model,
        prompt="a lighthouse",
        steps=steps,
        width=side,
        height=side,
        init_image=UPLOAD,
        strength=strength,
        mask=MASK if inpaint else None,
        loras=lora_refs,
    )
    cal = calibration_for(model, tier)
    size = {"steps": params.effective_steps, "width": side, "height": side, "batch_size": 1}
    estimate = estimate_for(params, tier)
    text_to_image = estimate_from(cal, **size)
    assert vae_encodes(params) == (2 if inpaint else 1)
    assert estimate == text_to_image + inputs_ms(
        cal, **size, loras=loras, vae_encodes=vae_encodes(params)
    )
    hold = hold_for_estimate(estimate, tier)
    assert budget_ms_for_hold(hold, tier) >= estimate  # the worker's budget covers it all


def test_a_text_to_image_job_without_loras_is_priced_as_before() -> None:
    params = JobParameters(model="tiny-sd", prompt="a lighthouse", steps=4, width=64, height=64)
    cal = CALIBRATION[("tiny-sd", DeviceClass.CPU)]
    assert vae_encodes(params) == 0
    assert estimate_for(params, GpuTier.BASIC) == estimate_from(
        cal, steps=4, width=64, height=64, batch_size=1
    )


def test_an_upscaler_encodes_nothing() -> None:
    upscaler = next(m for m, spec in MODELS.items() if spec.upscale > 0)
    params = JobParameters(
        model=upscaler,
        prompt="x",
        steps=1,
        width=256,
        height=256,
        init_image=UPLOAD,
        scale=MODELS[upscaler].upscale,
    )
    assert vae_encodes(params) == 0


def test_the_tiny_rows_inputs_cover_what_bench_consumer_overhead_measured() -> None:
    """BENCHMARKS.md, bench.consumer_overhead: at 64 px, 4 steps, one LoRA added 86 ms (the
    slower of the two runs' medians), and an img2img job's VAE encode 60 ms."""
    cal = CALIBRATION[("tiny-sd", DeviceClass.CPU)]
    size = {"steps": 4, "width": 64, "height": 64, "batch_size": 1}
    assert inputs_ms(cal, **size, loras=1, vae_encodes=0) >= 86
    assert inputs_ms(cal, **size, loras=0, vae_encodes=1) >= 60


def test_a_learned_rate_is_per_pixel_step_so_the_inputs_are_added_to_it() -> None:
    learned = LearnedRate(samples=LEARNED_SAMPLES_MIN, gpu_ns_per_pixel_step=100)
    cal = calibration_for("sd-1.5", GpuTier.BASIC)
    size = {"steps": 30, "width": 512, "height": 512, "batch_size": 1}
    plain = estimate_gpu_ms(
        MODELS["sd-1.5"].family, GpuTier.BASIC, **size, model="sd-1.5", learned=learned
    )
    with_inputs = estimate_gpu_ms(
        MODELS["sd-1.5"].family,
        GpuTier.BASIC,
        **size,
        model="sd-1.5",
        learned=learned,
        loras=2,
        vae_encodes=1,
    )
    assert plain == learned.estimate_ms(**size)
    assert with_inputs == plain + inputs_ms(cal, **size, loras=2, vae_encodes=1) > plain


def test_a_lora_ref_is_counted_once_per_lora() -> None:
    base = {"model": "tiny-sd", "prompt": "x", "steps": 8, "width": 64, "height": 64}
    one = JobParameters(**base, loras=(LoraRef(id=UUID(int=1)),))
    two = JobParameters(
        **base,
        loras=(LoraRef(id=UUID(int=1)), LoraRef(id=UUID(int=2))),
    )
    none = JobParameters(**base)
    assert estimate_for(none, GpuTier.BASIC) < estimate_for(one, GpuTier.BASIC)
    assert estimate_for(one, GpuTier.BASIC) < estimate_for(two, GpuTier.BASIC)

"""The calibration data the estimator reads (domain/calibration_data.py, written by
bench.calibrate) and the learned rates it prefers when enough jobs settled."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from domain import calibration_data
from domain.calibration import (
    CALIBRATION,
    HAND_ESTIMATE,
    LEARNED_SAMPLES_MIN,
    MEASURED,
    MODEL_DEVICE,
    Calibration,
    DeviceClass,
    LearnedRate,
    calibration_for,
    estimate_from,
    gpu_ns_per_pixel_step,
    size_bucket,
)
from domain.catalog import MODELS
from domain.estimation import estimate_gpu_ms
from domain.plans import GpuTier


def test_every_row_has_the_schema_and_says_where_its_numbers_come_from() -> None:
    fields = set(Calibration.__dataclass_fields__) | {"key", "device"}
    for row in calibration_data.ROWS:
        assert set(row) <= fields, f"unknown fields in {row}"
        assert {"key", "device", "base_pixels", "step_ms", "overhead_ms", "source"} <= set(row)
        assert row["source"] in (MEASURED, HAND_ESTIMATE)
        DeviceClass(row["device"])
        if row["source"] == MEASURED:
            date.fromisoformat(row["measured_at"])
            assert row["machine"] and row["grid"] and row["residual_p95_pct"] is not None
    assert len(CALIBRATION) == len(calibration_data.ROWS)  # no two rows for one key


def test_gpu_device_classes_are_not_claimed_measured_without_a_gpu_run() -> None:
    """The GPU rows stay hand estimates until a CUDA run writes them (with its card named)."""
    for (_key, device), row in CALIBRATION.items():
        if row.source == MEASURED and device is not DeviceClass.CPU:
            assert row.machine and any(c in row.machine.upper() for c in ("NVIDIA", "TESLA"))


def test_every_catalog_model_is_priced_on_every_tier_it_is_sold_on() -> None:
    for model in MODELS:
        for tier in GpuTier:
            cal = calibration_for(model, tier)  # a KeyError here is a missing row
            assert cal.step_ms + cal.step_quad_ms > 0
    for model in MODEL_DEVICE:
        assert model in MODELS, f"a device fallback for {model}, which is not in the catalog"


def test_tiny_sd_is_priced_by_its_cpu_row_on_every_tier() -> None:
    rows = {calibration_for("tiny-sd", tier) for tier in GpuTier}
    assert rows == {CALIBRATION[("tiny-sd", DeviceClass.CPU)]}


@given(
    model=st.sampled_from(sorted(MODELS)),
    tier=st.sampled_from(list(GpuTier)),
    steps=st.integers(1, 150),
    side=st.integers(4, 128).map(lambda n: n * 16),
    batch=st.integers(1, 8),
)
def test_the_estimate_grows_with_the_work(
    model: str, tier: GpuTier, steps: int, side: int, batch: int
) -> None:
    cal = calibration_for(model, tier)
    one = estimate_from(cal, steps=steps, width=side, height=side, batch_size=batch)
    assert one > 0
    assert estimate_from(cal, steps=steps + 1, width=side, height=side, batch_size=batch) >= one
    assert estimate_from(cal, steps=steps, width=side + 16, height=side, batch_size=batch) >= one
    assert estimate_from(cal, steps=steps, width=side, height=side, batch_size=batch + 1) >= one


@given(
    gpu_ms=st.integers(1, 10**7),
    steps=st.integers(1, 150),
    side=st.integers(2, 128).map(lambda n: n * 16),
    batch=st.integers(1, 8),
)
def test_a_learned_rate_prices_its_own_sample_at_no_less_than_was_billed(
    gpu_ms: int, steps: int, side: int, batch: int
) -> None:
    rate = gpu_ns_per_pixel_step(gpu_ms, steps=steps, width=side, height=side, batch=batch)
    learned = LearnedRate(samples=LEARNED_SAMPLES_MIN, gpu_ns_per_pixel_step=rate)
    said = learned.estimate_ms(steps=steps, width=side, height=side, batch_size=batch)
    assert gpu_ms <= said <= gpu_ms + -(-steps * side * side * batch // 1_000_000)


def test_the_estimator_uses_a_learned_rate_only_with_enough_samples() -> None:
    def estimate(learned: LearnedRate | None) -> int:
        return estimate_gpu_ms(
            MODELS["sd-1.5"].family,
            GpuTier.BASIC,
            steps=30,
            width=512,
            height=512,
            batch_size=1,
            model="sd-1.5",
            learned=learned,
        )

    table = estimate(None)
    assert estimate(LearnedRate(LEARNED_SAMPLES_MIN - 1, 100)) == table
    learned = estimate(LearnedRate(LEARNED_SAMPLES_MIN, 100))
    assert learned == -(-100 * 30 * 512 * 512 // 1_000_000) != table


def test_size_buckets_span_a_factor_of_two_in_pixels() -> None:
    assert size_bucket(512, 512) == size_bucket(512, 256 + 8) == 18
    assert size_bucket(512, 256) == 17
    assert size_bucket(1024, 1024) == 20


@given(
    contention=st.integers(100, 1000),
    steps=st.integers(1, 150),
    side=st.integers(2, 64).map(lambda n: n * 16),
)
def test_contention_scales_the_whole_estimate_up(contention: int, steps: int, side: int) -> None:
    fastest = Calibration(base_pixels=65536, step_ms=40, overhead_ms=30, fixed_ms=20)
    shared = Calibration(65536, 40, 30, fixed_ms=20, contention_pct=contention)
    one = estimate_from(fastest, steps=steps, width=side, height=side, batch_size=1)
    scaled = estimate_from(shared, steps=steps, width=side, height=side, batch_size=1)
    assert scaled == -(-one * contention // 100) >= one

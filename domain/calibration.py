"""The estimator's calibration: measured cost rows per (model or family, device class), read once
at import from ``domain/calibration_data.py`` (written by ``python -m bench.calibrate``), and the
rates learned from billed jobs that the caller may pass in (the domain does no I/O).

A row prices a job as

    fixed_ms + ceil(overhead_ms x px x batch / base)
             + ceil(step_ms x steps x px x batch / base)
             + ceil(step_quad_ms x steps x px^2 x batch / base^2)

scaled by ``contention_pct`` / 100 (rounded up) where the device is shared: the row's times
are the fastest runs measured, and on a shared machine other work makes runs slower by a
measured factor.

with ``px = width x height`` and ``base = base_pixels``: a per-job constant, a per-image part
linear in pixels (text encoding, VAE decode), a per-step part linear in pixels (convolutions)
and, where the fit needed it, a per-step part quadratic in pixels (self-attention). A row whose
``source`` is not ``measured`` is a hand estimate and says so; it is never presented as
measured.

What a job's inputs add (issue 15) is priced by two more terms of the row, also scaled by
``contention_pct``:

    + ceil(lora_step_ms x loras x steps x px x batch / base)     (each LoRA, every step)
    + ceil(vae_encode_ms x encodes x px / base)                   (each input image encoded)

A LoRA applied unfused (peft keeps the adapter beside each projection, so removing it restores
the base exactly) adds its matmuls to every step of every image; image-to-image encodes its
init image through the VAE once per job (diffusers encodes one image and repeats its latents
for the batch), inpainting also its masked image. ``bench.calibrate`` does not measure these
terms (its grid is text-to-image only): they come from ``bench.consumer_overhead``, so they
carry their own provenance (``inputs_source``, ``inputs_measured``), kept by ``bench.calibrate``
when it rewrites the row's other terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from domain.calibration_data import DEVICE_OF_MODEL, ROWS
from domain.catalog import MODELS
from domain.plans import GpuTier

MEASURED = "measured"
HAND_ESTIMATE = "hand-estimate, not measured"
SOURCES = (MEASURED, HAND_ESTIMATE)


class DeviceClass(StrEnum):
    CPU = "cpu"
    T4 = "t4"
    A10G = "a10g"
    A100 = "a100"
    H100 = "h100"
    H200 = "h200"  # the card a lent device machine has (bench/gpu_check.sh measures it)


# The card each tier's workers run on (domain/plans.py, README "Plans").
TIER_DEVICE: dict[GpuTier, DeviceClass] = {
    GpuTier.BASIC: DeviceClass.T4,
    GpuTier.HIGH_PERFORMANCE: DeviceClass.A10G,
    GpuTier.DEDICATED: DeviceClass.A100,
}


@dataclass(frozen=True)
class Calibration:
    base_pixels: int  # the size the row's times are given at, width x height
    step_ms: int  # one denoising step (with classifier-free guidance) at base_pixels, batch 1
    overhead_ms: int  # per image at base_pixels: text encoding + VAE decode
    fixed_ms: int = 0  # per job, whatever its size
    step_quad_ms: int = 0  # per step at base_pixels, growing with pixels squared (attention)
    # The whole estimate in percent of the fastest runs: above 100 where the device is shared
    # (CPU workers beside the whole stack) and bench.calibrate measured how much slower its
    # runs got; 100 on a dedicated card.
    contention_pct: int = 100
    source: str = HAND_ESTIMATE
    measured_at: str | None = None  # ISO date of the run that measured it
    machine: str | None = None  # where it was measured
    grid: str | None = None  # the sizes, steps and batches it was measured at
    residual_p95_pct: float | None = None  # the fit's 95th-percentile |relative residual|
    # The inputs' terms (module docstring), at base_pixels, and where they come from.
    lora_step_ms: int = 0  # one LoRA on one step of one image
    vae_encode_ms: int = 0  # one input image through the VAE encoder
    inputs_source: str = HAND_ESTIMATE
    inputs_measured: str | None = None  # measured: when, where, by what, from which numbers

    def __post_init__(self) -> None:
        assert self.base_pixels > 0, "a calibration needs a base size"
        assert min(self.step_ms, self.overhead_ms, self.fixed_ms, self.step_quad_ms) >= 0
        assert self.step_ms + self.step_quad_ms > 0, "a step must cost something"
        assert self.contention_pct >= 100, "contention only ever adds time"
        assert self.source in SOURCES, f"unknown calibration source {self.source!r}"
        if self.source == MEASURED:
            assert self.measured_at and self.machine, "a measured row says when and where"
        assert min(self.lora_step_ms, self.vae_encode_ms) >= 0
        assert self.inputs_source in SOURCES, f"unknown inputs source {self.inputs_source!r}"
        if self.inputs_source == MEASURED:
            assert self.inputs_measured, "measured input terms say when, where and how"


# The fields that price a job's inputs: bench.calibrate keeps them when it rewrites a row.
INPUT_TERM_FIELDS = ("lora_step_ms", "vae_encode_ms", "inputs_source", "inputs_measured")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def estimate_from(
    cal: Calibration,
    *,
    steps: int,
    width: int,
    height: int,
    batch_size: int,
    loras: int = 0,
    vae_encodes: int = 0,
) -> int:
    """The row's estimate of a run: the text-to-image terms, plus ``inputs_ms``."""
    assert steps >= 0 and width > 0 and height > 0 and batch_size > 0
    px, base = width * height, cal.base_pixels
    fastest = (
        cal.fixed_ms
        + ceil_div(cal.overhead_ms * px * batch_size, base)
        + ceil_div(cal.step_ms * steps * px * batch_size, base)
        + ceil_div(cal.step_quad_ms * steps * px * px * batch_size, base * base)
    )
    inputs = inputs_ms(
        cal,
        steps=steps,
        width=width,
        height=height,
        batch_size=batch_size,
        loras=loras,
        vae_encodes=vae_encodes,
    )
    return ceil_div(fastest * cal.contention_pct, 100) + inputs


def inputs_ms(
    cal: Calibration,
    *,
    steps: int,
    width: int,
    height: int,
    batch_size: int,
    loras: int,
    vae_encodes: int,
) -> int:
    """What ``loras`` LoRAs on every step and ``vae_encodes`` input images through the VAE
    encoder add to a run, contention included: 0 for a text-to-image job without LoRAs."""
    assert steps >= 0 and width > 0 and height > 0 and batch_size > 0
    assert loras >= 0 and vae_encodes >= 0
    px, base = width * height, cal.base_pixels
    fastest = ceil_div(cal.lora_step_ms * loras * steps * px * batch_size, base) + ceil_div(
        cal.vae_encode_ms * vae_encodes * px, base
    )
    return ceil_div(fastest * cal.contention_pct, 100)


def _parse(rows: tuple[Mapping[str, Any], ...]) -> dict[tuple[str, DeviceClass], Calibration]:
    table: dict[tuple[str, DeviceClass], Calibration] = {}
    for row in rows:
        fields = dict(row)
        key = (str(fields.pop("key")), DeviceClass(fields.pop("device")))
        assert key not in table, f"two calibration rows for {key}"
        table[key] = Calibration(**fields)
    return table


CALIBRATION: dict[tuple[str, DeviceClass], Calibration] = _parse(ROWS)
# Models that run on one device class whatever the tier (tiny-sd: CPU workers in tests and the
# demo), and models priced by another's row: an explicit fallback, never a silent one.
MODEL_DEVICE: dict[str, DeviceClass] = {
    model: DeviceClass(device) for model, (device, _) in DEVICE_OF_MODEL.items()
}
MODEL_ROW_KEY: dict[str, str] = {model: row for model, (_, row) in DEVICE_OF_MODEL.items()}


def calibration_for(model: str, tier: GpuTier) -> Calibration:
    """The row that prices ``model`` on ``tier``: the model's own, else its family's."""
    spec = MODELS[model]
    device = MODEL_DEVICE.get(model, TIER_DEVICE[tier])
    own = CALIBRATION.get((MODEL_ROW_KEY.get(model, model), device))
    return own or CALIBRATION[(spec.family.value, device)]


# ------------------------------------------------------------------------------ learned rates

# The learned rate replaces the calibration once this many settled jobs of the same model,
# tier and size bucket completed; fewer say too little about the tail.
LEARNED_SAMPLES_MIN = 20
# The learned rate is this quantile of the recent samples: an upper one, so that most jobs fit
# their hold, but not the maximum, which one stalled job would set.
LEARNED_QUANTILE = 0.95
LEARNED_WINDOW = 500  # the newest samples per bucket that the quantile is taken over
NS_PER_MS = 1_000_000


def size_bucket(width: int, height: int) -> int:
    """Sizes within a factor of two in pixels share a bucket: ceil(log2(width x height))."""
    assert width > 0 and height > 0
    return (width * height - 1).bit_length()


@dataclass(frozen=True)
class LearnedRate:
    """What settled jobs of one (model, tier, size bucket) cost: the upper quantile of their
    billed GPU time per step, per image, per pixel (all of the run: overheads included)."""

    samples: int
    gpu_ns_per_pixel_step: int

    def __post_init__(self) -> None:
        assert self.samples >= 0 and self.gpu_ns_per_pixel_step > 0

    @property
    def usable(self) -> bool:
        return self.samples >= LEARNED_SAMPLES_MIN

    def estimate_ms(self, *, steps: int, width: int, height: int, batch_size: int) -> int:
        work = max(steps, 1) * width * height * batch_size  # a 0-step run still decodes
        return ceil_div(self.gpu_ns_per_pixel_step * work, NS_PER_MS)


def gpu_ns_per_pixel_step(gpu_ms: int, *, steps: int, width: int, height: int, batch: int) -> int:
    """One settled job's sample, as the projection records it: rounded up (at least 1), so
    that the rate prices that job at no less than it was billed."""
    work = max(steps, 1) * width * height * batch
    return max(1, ceil_div(gpu_ms * NS_PER_MS, work))

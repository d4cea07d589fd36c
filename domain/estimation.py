"""Expected GPU time of a job, and the hold that covers it.

The hold is the job's time budget: the worker stops a job when the measured GPU time reaches
it, so a job can never consume more than it reserved. Policy (README, "Billing"):

    estimate_ms = the learned rate x steps x pixels x batch     (enough settled jobs alike)
                | the calibration row's formula              (domain/calibration.py)
                + the row's terms for the job's inputs       (LoRAs, VAE encodes)
    hold_mc     = (ceil(estimate_ms x 3 / 2) + 1000) x rate_mc_per_ms

The calibration rows are measured by ``bench.calibrate`` per (family or model, device class)
and say when and where; rows that could not be measured yet say so. The learned rate is an
upper quantile of what settled jobs of the same model, tier and size bucket were billed, which
the caller reads from the read models and passes in. The 1.5x factor and the 1 s floor absorb
noise and warm-up. The inputs' terms are added on either path: each LoRA costs work on every
step, and an image-to-image or inpainting job encodes its inputs through the VAE before its
first step (``vae_encodes``); a learned rate is per pixel-step, so it cannot say either.
"""

from __future__ import annotations

from domain.calibration import (
    CALIBRATION,
    TIER_DEVICE,
    LearnedRate,
    calibration_for,
    ceil_div,
    estimate_from,
    inputs_ms,
)
from domain.catalog import MODELS, ModelFamily
from domain.parameters import JobParameters
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier

HOLD_FACTOR_NUM, HOLD_FACTOR_DEN = 3, 2
HOLD_MARGIN_MS = 1000


def estimate_gpu_ms(
    family: ModelFamily,
    tier: GpuTier,
    *,
    steps: int,
    width: int,
    height: int,
    batch_size: int,
    model: str | None = None,
    learned: LearnedRate | None = None,
    loras: int = 0,
    vae_encodes: int = 0,
) -> int:
    """The expected GPU time: from what this model's jobs were billed on this tier at this
    size when enough of them settled (``learned``), else from the calibration row; plus what
    ``loras`` LoRAs and ``vae_encodes`` encoded input images add, from the row either way."""
    if model is not None:
        cal = calibration_for(model, tier)
    else:
        cal = CALIBRATION[(family.value, TIER_DEVICE[tier])]
    size = {"steps": steps, "width": width, "height": height, "batch_size": batch_size}
    if learned is not None and learned.usable:
        inputs = inputs_ms(cal, **size, loras=loras, vae_encodes=vae_encodes)
        return learned.estimate_ms(**size) + inputs
    return estimate_from(cal, **size, loras=loras, vae_encodes=vae_encodes)


def vae_encodes(params: JobParameters) -> int:
    """The input images a job's run encodes through the VAE: image-to-image its init image;
    inpainting also its masked image (diffusers' ``prepare_mask_latents``); an upscaler none
    (it conditions on the low-resolution pixels, or has no VAE at all)."""
    if params.init_image is None or MODELS[params.model].upscale > 0:
        return 0
    return 1 if params.mask is None else 2


def hold_for_estimate(estimate_ms: int, tier: GpuTier) -> int:
    """The millicredits to reserve for a job expected to take ``estimate_ms``."""
    budget_ms = ceil_div(estimate_ms * HOLD_FACTOR_NUM, HOLD_FACTOR_DEN) + HOLD_MARGIN_MS
    return budget_ms * RATE_MC_PER_GPU_MS[tier]


def budget_ms_for_hold(hold_mc: int, tier: GpuTier) -> int:
    """The GPU-time budget a hold pays for: the worker stops the job there."""
    return hold_mc // RATE_MC_PER_GPU_MS[tier]


def charge_for(gpu_ms: int, tier: GpuTier) -> int:
    """``charged_mc = gpu_ms x tier rate``: exact, no rounding."""
    if gpu_ms < 0:
        raise ValueError("gpu_ms must be >= 0")
    return gpu_ms * RATE_MC_PER_GPU_MS[tier]

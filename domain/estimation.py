"""Expected GPU time of a job, and the hold that covers it.

The hold is the job's time budget: the worker stops a job when the measured GPU time reaches
it, so a job can never consume more than it reserved. Policy (README, "Billing"):

    estimate_ms = overhead_ms + ceil(step_ms x steps x pixels x batch / base_pixels)
    hold_mc     = (ceil(estimate_ms x 3 / 2) + 1000) x rate_mc_per_ms

The calibration table holds per-step and fixed (text encoding + VAE decode) times measured on
each tier at the family's native size; pixel and batch scaling is linear. The 1.5x factor and
the 1 s floor absorb noise, warm-up and the quadratic part of attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.catalog import ModelFamily
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier

HOLD_FACTOR_NUM, HOLD_FACTOR_DEN = 3, 2
HOLD_MARGIN_MS = 1000


@dataclass(frozen=True)
class Calibration:
    base_pixels: int  # native resolution of the family, width x height
    step_ms: int  # one denoising step (with classifier-free guidance) at base_pixels, batch 1
    overhead_ms: int  # text encoding + VAE decode at base_pixels, batch 1


_F, _T = ModelFamily, GpuTier
CALIBRATION: dict[tuple[ModelFamily, GpuTier], Calibration] = {
    (_F.SD15, _T.BASIC): Calibration(512 * 512, 180, 600),
    (_F.SD15, _T.HIGH_PERFORMANCE): Calibration(512 * 512, 85, 300),
    (_F.SD15, _T.DEDICATED): Calibration(512 * 512, 40, 150),
    (_F.SDXL, _T.BASIC): Calibration(1024 * 1024, 1000, 2000),
    (_F.SDXL, _T.HIGH_PERFORMANCE): Calibration(1024 * 1024, 350, 900),
    (_F.SDXL, _T.DEDICATED): Calibration(1024 * 1024, 150, 400),
    (_F.FLUX, _T.BASIC): Calibration(1024 * 1024, 4000, 3000),
    (_F.FLUX, _T.HIGH_PERFORMANCE): Calibration(1024 * 1024, 1800, 1500),
    (_F.FLUX, _T.DEDICATED): Calibration(1024 * 1024, 600, 600),
}


# Models whose speed is not their family's: the tiny local model runs on CPU workers in tests
# and the demo, where a step of even a tiny UNet at 256x256 costs tens of milliseconds.
MODEL_CALIBRATION: dict[str, Calibration] = {
    "tiny-sd": Calibration(256 * 256, 300, 1500),
    "tiny-sd-inpaint": Calibration(256 * 256, 300, 1500),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def estimate_gpu_ms(
    family: ModelFamily,
    tier: GpuTier,
    *,
    steps: int,
    width: int,
    height: int,
    batch_size: int,
    model: str | None = None,
) -> int:
    cal = MODEL_CALIBRATION.get(model or "") or CALIBRATION[(family, tier)]
    scaled = cal.step_ms * steps * width * height * batch_size
    overhead = _ceil_div(cal.overhead_ms * width * height * batch_size, cal.base_pixels)
    return overhead + _ceil_div(scaled, cal.base_pixels)


def hold_for_estimate(estimate_ms: int, tier: GpuTier) -> int:
    """The millicredits to reserve for a job expected to take ``estimate_ms``."""
    budget_ms = _ceil_div(estimate_ms * HOLD_FACTOR_NUM, HOLD_FACTOR_DEN) + HOLD_MARGIN_MS
    return budget_ms * RATE_MC_PER_GPU_MS[tier]


def budget_ms_for_hold(hold_mc: int, tier: GpuTier) -> int:
    """The GPU-time budget a hold pays for: the worker stops the job there."""
    return hold_mc // RATE_MC_PER_GPU_MS[tier]


def charge_for(gpu_ms: int, tier: GpuTier) -> int:
    """``charged_mc = gpu_ms x tier rate``: exact, no rounding."""
    if gpu_ms < 0:
        raise ValueError("gpu_ms must be >= 0")
    return gpu_ms * RATE_MC_PER_GPU_MS[tier]

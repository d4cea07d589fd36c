"""Expected GPU time of a job, and the hold that covers it.

The hold is the job's time budget: the worker stops a job when the measured GPU time reaches
it, so a job can never consume more than it reserved. Policy (README, "Billing"):

    estimate_ms = the learned rate x steps x pixels x batch     (enough settled jobs alike)
                | the calibration row's formula              (domain/calibration.py)
    hold_mc     = (ceil(estimate_ms x 3 / 2) + 1000) x rate_mc_per_ms

The calibration rows are measured by ``bench.calibrate`` per (family or model, device class)
and say when and where; rows that could not be measured yet say so. The learned rate is an
upper quantile of what settled jobs of the same model, tier and size bucket were billed, which
the caller reads from the read models and passes in. The 1.5x factor and the 1 s floor absorb
noise and warm-up.
"""

from __future__ import annotations

from domain.calibration import (
    CALIBRATION,
    TIER_DEVICE,
    LearnedRate,
    calibration_for,
    ceil_div,
    estimate_from,
)
from domain.catalog import ModelFamily
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
) -> int:
    """The expected GPU time: from what this model's jobs were billed on this tier at this
    size when enough of them settled (``learned``), else from the calibration row."""
    if learned is not None and learned.usable:
        return learned.estimate_ms(steps=steps, width=width, height=height, batch_size=batch_size)
    if model is not None:
        cal = calibration_for(model, tier)
    else:
        cal = CALIBRATION[(family.value, TIER_DEVICE[tier])]
    return estimate_from(cal, steps=steps, width=width, height=height, batch_size=batch_size)


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

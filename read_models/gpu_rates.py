"""What settled jobs cost, from the ``hold_outcomes`` read model: the learned rate admission
passes to the estimator, and hold tightness per tier for the gauges.

The learned rate is the ``LEARNED_QUANTILE`` of the newest ``LEARNED_WINDOW`` completed jobs'
samples of one (model, tier, size bucket), read for every tier in one query; with fewer than
``LEARNED_SAMPLES_MIN`` of them the estimator keeps to its calibration row
(``LearnedRate.usable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from domain.calibration import LEARNED_QUANTILE, LEARNED_WINDOW, LearnedRate, size_bucket
from domain.plans import GpuTier

_LEARNED = f"""
SELECT tier, count(*) AS samples,
       percentile_disc({LEARNED_QUANTILE}) WITHIN GROUP (ORDER BY gpu_ns_per_pixel_step) AS rate
FROM (
    SELECT tier, gpu_ns_per_pixel_step,
           row_number() OVER (PARTITION BY tier ORDER BY settled_position DESC) AS newest
    FROM hold_outcomes
    WHERE model = $1 AND size_bucket = $2 AND gpu_ns_per_pixel_step IS NOT NULL
) AS recent
WHERE newest <= {LEARNED_WINDOW}
GROUP BY tier
"""

# Over the billed jobs settled in the window: charged / hold, and how many ran into their budget.
_TIGHTNESS = """
SELECT tier, count(*) AS settled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY charged_mc::float8 / hold_mc) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY charged_mc::float8 / hold_mc) AS p95,
       count(*) FILTER (WHERE stopped_at_budget) AS stopped
FROM hold_outcomes
WHERE billed AND hold_mc > 0 AND settled_at >= now() - $1::interval
GROUP BY tier ORDER BY tier
"""


async def learned_rates(
    conn: asyncpg.Connection | asyncpg.Pool, model: str, width: int, height: int
) -> dict[GpuTier, LearnedRate]:
    """Per tier, the learned rate of jobs of ``model`` at this size (tiers without completed
    jobs absent). Admission picks the plan's tier; a quote and a submission read the same."""
    rows = await conn.fetch(_LEARNED, model, size_bucket(width, height))
    return {
        GpuTier(r["tier"]): LearnedRate(samples=r["samples"], gpu_ns_per_pixel_step=r["rate"])
        for r in rows
        if r["tier"] in GpuTier.__members__.values()
    }


@dataclass(frozen=True)
class TierTightness:
    tier: str
    settled: int
    p50: float  # charged / hold
    p95: float
    stopped_at_budget: int

    @property
    def stopped_rate(self) -> float:
        return self.stopped_at_budget / self.settled if self.settled else 0.0


async def hold_tightness(
    conn: asyncpg.Connection | asyncpg.Pool, window: timedelta = timedelta(days=7)
) -> list[TierTightness]:
    rows = await conn.fetch(_TIGHTNESS, window)
    return [TierTightness(r["tier"], r["settled"], r["p50"], r["p95"], r["stopped"]) for r in rows]

"""Projection "hold_outcomes": per accepted job, what was held and what the run was billed.

Two readers: the API's admission, which passes the estimator a learned rate (an upper quantile
of the billed GPU time per step, image and pixel of completed jobs of the same model, tier
and size bucket: ``read_models/gpu_rates.py``), and the gauges of hold tightness (charged /
hold) and of runs stopped at their budget, per tier. A rejected job leaves no row.

The sample of a completed job is computed in SQL from the row's own steps, pixels and batch:
``ceil(gpu_ms x 10^6 / (max(steps, 1) x pixels x batch))``, which is
``domain.calibration.gpu_ns_per_pixel_step`` (tests/integration hold the two together).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.calibration import NS_PER_MS, size_bucket
from domain.job_lifecycle import Fault
from domain.parameters import JobParameters
from domain.personal_data import withheld
from eventstore.decoding import domain_event
from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import Statement, StatementProjection

# Every statement starts with $1 job id, $2 occurred_at, $3 position.

_SUBMITTED = """
INSERT INTO hold_outcomes (
    job_id, model, tier, size_bucket, steps, pixels, batch_size, submitted_at, position
)
VALUES ($1, $4, $5, $6, $7, $8, $9, $2, $3)
"""


def _settle(assignments: str) -> str:
    """Record a terminal outcome on the job's row (which must exist)."""
    return f"""
WITH job AS (
    UPDATE hold_outcomes SET {assignments}, gpu_ms = $4, charged_mc = $5,
        settled_at = $2, settled_position = $3, position = $3
    FROM (SELECT GREATEST(steps, 1)::bigint * pixels * batch_size AS work
          FROM hold_outcomes WHERE job_id = $1) AS size
    WHERE job_id = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM job), 'an outcome of job ' || $1::text || ', which was never accepted'
)
"""


_ACCEPTED = """
WITH job AS (
    UPDATE hold_outcomes SET hold_mc = $4, budget_ms = $5, accepted_at = $2, position = $3
    WHERE job_id = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM job), 'job ' || $1::text || ' accepted, but never submitted'
)
"""
_REJECTED = "DELETE FROM hold_outcomes WHERE job_id = $1"
_COMPLETED = _settle(
    "outcome = 'completed', billed = true,"
    # $4::bigint: a parameter takes the type of its first use, and `$4 * <int>` would make
    # it an integer, whose product overflows past ~2 s of GPU time.
    f" gpu_ns_per_pixel_step = GREATEST(1, ($4::bigint * {NS_PER_MS} + work - 1) / work)"
)
# A user-fault failure is billed; one at gpu_ms >= budget_ms is the run stopped at its budget.
_FAILED = _settle("outcome = 'failed', billed = $6, stopped_at_budget = ($6 AND $4 >= budget_ms)")
_CANCELLED = _settle("outcome = 'cancelled', billed = $6")


def _submitted(ev: Any) -> tuple[Any, ...]:
    params = JobParameters.model_validate(withheld(ev.parameters))  # the prompts: not needed
    return (
        params.model,
        ev.tier,
        size_bucket(params.width, params.height),
        params.effective_steps,
        params.width * params.height,
        params.batch_size,
    )


_STATEMENTS: dict[str, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    "GenerationJob.Submitted": (_SUBMITTED, _submitted),
    "GenerationJob.Accepted": (_ACCEPTED, lambda ev: (ev.hold_mc, ev.budget_ms)),
    "GenerationJob.Completed": (_COMPLETED, lambda ev: (ev.gpu_ms, ev.charged_mc)),
    "GenerationJob.Failed": (
        _FAILED,
        lambda ev: (ev.gpu_ms, ev.charged_mc, ev.fault == Fault.USER.value),
    ),
    # Cancelled before the start: the hold was voided. Stopped while running: billed.
    "GenerationJob.Cancelled": (
        _CANCELLED,
        lambda ev: (ev.gpu_ms, ev.charged_mc, ev.after_start or ev.charged_mc > 0),
    ),
}


class HoldOutcomesProjection(StatementProjection):
    name = "hold_outcomes"
    topics = (JOBS_TOPIC,)
    tables = ("hold_outcomes",)

    def wants(self, env: Envelope) -> bool:
        return env.type in _STATEMENTS or env.type == "GenerationJob.Rejected"

    def statements(self, env: Envelope) -> list[Statement]:
        if env.type == "GenerationJob.Rejected":
            return [(_REJECTED, (env.aggregate_id,))]
        sql, arguments = _STATEMENTS[env.type]
        key = (env.aggregate_id, env.occurred_at, env.position)
        return [(sql, key + arguments(domain_event(env)))]

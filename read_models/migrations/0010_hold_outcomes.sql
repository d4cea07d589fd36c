-- Projection "hold_outcomes" (projections/hold_outcomes.py): per accepted job, what was held and
-- what the run was billed, so that holds can learn from what settled jobs cost (the estimator's
-- learned rate, read_models/gpu_rates.py) and their tightness can be watched per tier.
--
-- gpu_ns_per_pixel_step: billed GPU time per denoising step, image and pixel (overheads
-- included), of a completed job: domain.calibration.gpu_ns_per_pixel_step, computed here.
-- stopped_at_budget: the run reached its hold's time budget (gpu_ms >= budget_ms).
CREATE TABLE hold_outcomes (
    job_id                 UUID PRIMARY KEY,
    model                  TEXT NOT NULL,
    tier                   TEXT NOT NULL,
    size_bucket            INTEGER NOT NULL,   -- domain.calibration.size_bucket(width, height)
    steps                  INTEGER NOT NULL,   -- the denoising steps run (effective_steps)
    pixels                 BIGINT NOT NULL,
    batch_size             INTEGER NOT NULL,
    hold_mc                BIGINT,             -- NULL until accepted
    budget_ms              BIGINT,
    outcome                TEXT,               -- completed | failed | cancelled; NULL: unfinished
    billed                 BOOLEAN NOT NULL DEFAULT false,  -- the hold was settled (charged)
    gpu_ms                 BIGINT,
    charged_mc             BIGINT,
    gpu_ns_per_pixel_step  BIGINT,
    stopped_at_budget      BOOLEAN NOT NULL DEFAULT false,
    submitted_at           TIMESTAMPTZ NOT NULL,
    accepted_at            TIMESTAMPTZ,
    settled_at             TIMESTAMPTZ,
    settled_position       BIGINT,
    position               BIGINT NOT NULL
);
-- The learned rate: the newest completed samples of one (model, tier, bucket).
CREATE INDEX hold_outcomes_rate ON hold_outcomes (model, tier, size_bucket, settled_position DESC)
    WHERE gpu_ns_per_pixel_step IS NOT NULL;
-- Tightness per tier over a recent window.
CREATE INDEX hold_outcomes_settled ON hold_outcomes (tier, settled_at) WHERE billed;

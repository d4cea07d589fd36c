-- The scheduler's durable view of the work: every job that was accepted and is not yet
-- finished, written exactly once from the jobs topic like any projection. After a restart the
-- scheduler reads its queue from here: nothing is lost and nothing is dispatched twice.
CREATE TABLE scheduler_jobs (
    job_id         UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    tier           TEXT NOT NULL,
    model          TEXT NOT NULL,
    parameters     JSONB NOT NULL,
    seed           BIGINT NOT NULL,
    budget_ms      BIGINT NOT NULL DEFAULT 0,
    status         TEXT NOT NULL,        -- submitted | queued | dispatched | running | done
    attempt        INT NOT NULL DEFAULT 0,
    worker_id      TEXT,
    queued_at      TIMESTAMPTZ NOT NULL,
    dispatched_at  TIMESTAMPTZ,
    queue_position BIGINT NOT NULL       -- store position of the event that queued it: FIFO
);
CREATE INDEX scheduler_jobs_queue ON scheduler_jobs (tier, status, queue_position);

-- Completion webhooks (issue 19, part 3): the endpoints users register (written by the API,
-- not event-sourced, like api_keys), each user's default secret for the webhooks a submission
-- names itself, and the delivery process's own records (`pinksea webhooks`, workflows/webhooks/):
-- what it knows of each job, and one row per (target, event) it is to deliver.

-- Written by the API (/v1/webhook-endpoints). The secret signs every delivery, so it is kept
-- (unlike an API key's, which is only compared): it is shown once, at creation and rotation.
CREATE TABLE webhook_endpoints (
    endpoint_id    TEXT PRIMARY KEY,               -- we_<32 hex>
    user_id        TEXT NOT NULL,
    account_id     UUID NOT NULL,                  -- domain.ids.account_id(user_id): balance.low
    url            TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    enabled_events TEXT[] NOT NULL,                -- event types, or {'*'}
    secret         TEXT NOT NULL,                  -- whsec_<base64>
    disabled       BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    -- What the create request was (url, events, description): a replay of its Idempotency-Key
    -- with another request is a conflict.
    request_digest TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (user_id, created_at DESC, endpoint_id DESC);
CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id) WHERE NOT disabled;

-- The secret that signs a submission's own webhook (`webhook` on POST /v1/jobs): one per user,
-- created by whichever of the API (GET /v1/webhooks/default/secret) and the delivery process
-- needs it first.
CREATE TABLE webhook_default_secrets (
    user_id    TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- The delivery process's copy of job -> (user, the submission's webhook), from
-- GenerationJob.Submitted: a job's events share its partition, so Submitted is read first.
CREATE TABLE webhook_jobs (
    job_id      UUID PRIMARY KEY,
    user_id     TEXT NOT NULL,
    url         TEXT,                              -- NULL: the submission named no webhook
    events      TEXT[]
);

-- One row per (target, event): the unique key makes a redelivered Kafka message record
-- nothing new (exactly once here; at-least-once on the wire). The body is fixed when the row is
-- recorded, so every attempt sends the same bytes under the same webhook-id; the schedule is
-- the row's next_attempt_at, so a restarted process continues where the last one stopped.
CREATE TABLE webhook_deliveries (
    delivery_id       TEXT PRIMARY KEY,            -- whd_<32 hex>, derived from the key below
    target            TEXT NOT NULL,               -- an endpoint id, or 'job' (the job's own)
    endpoint_id       TEXT REFERENCES webhook_endpoints ON DELETE CASCADE,
    user_id           TEXT NOT NULL,
    event_id          TEXT NOT NULL,               -- evt_<aggregate hex>_<version>
    event_type        TEXT NOT NULL,
    url               TEXT NOT NULL,               -- the job's own target (endpoints: theirs)
    body              TEXT NOT NULL,               -- the exact JSON that is signed and sent
    status            TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TIMESTAMPTZ,                 -- pending: when it is due (or leased until)
    last_attempt_at   TIMESTAMPTZ,
    last_status_code  INTEGER,                     -- the receiver's answer (NULL: none)
    last_error        TEXT,                        -- why the last attempt failed
    delivered_at      TIMESTAMPTZ,
    occurred_at       TIMESTAMPTZ NOT NULL,        -- the event's business time
    created_at        TIMESTAMPTZ NOT NULL,
    UNIQUE (target, event_id),
    CHECK ((target = 'job') = (endpoint_id IS NULL)),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, created_at DESC, delivery_id DESC);

-- Read models: what the projections write and the API reads.
--
-- Conventions: money is BIGINT millicredits (mc, 1 credit = 1000 mc), USD is NUMERIC, times
-- are TIMESTAMPTZ. Every user-owned table carries user_id and an index that starts with it:
-- every query is scoped to one tenant. `position` columns hold the event-store position of the
-- event that last wrote the row, so a rebuilt table can be compared row for row.
--
-- No foreign keys between projection tables: each projection advances (and is rebuilt) on its
-- own, so another projection's rows may legitimately not be there yet.

-- Projection statements assert what they expect (the job's row exists, every lot moved) with
-- this, in SQL, so a statement fails the same way alone or pipelined in a batch.
CREATE FUNCTION read_model_check(ok boolean, failure text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'read model: %', failure USING ERRCODE = 'data_exception';
    END IF;
    RETURN true;
END
$$;

-- ------------------------------------------------------------------------ static: plans

-- Seeded from domain.plans.PLANS (tests/integration/test_read_models.py checks they agree).
CREATE TABLE subscription_plans (
    slug              TEXT PRIMARY KEY,
    type              TEXT NOT NULL,            -- paid | internal | trial
    usd_per_month     NUMERIC(12, 2),           -- NULL: negotiated
    credits_per_month BIGINT,                   -- whole credits; NULL: negotiated
    tier              TEXT NOT NULL,            -- basic | high_performance | dedicated
    concurrent_jobs   INTEGER NOT NULL,
    storage_gb        INTEGER NOT NULL,
    model_access      TEXT NOT NULL,            -- sd_only | flux_included | full
    third_party_api   BOOLEAN NOT NULL,
    lora_training     BOOLEAN NOT NULL,
    collaboration     BOOLEAN NOT NULL,
    node_editor       BOOLEAN NOT NULL,
    api_access        BOOLEAN NOT NULL,
    max_open_jobs     INTEGER NOT NULL,
    display_order     INTEGER NOT NULL
);

INSERT INTO subscription_plans (
    slug, type, usd_per_month, credits_per_month, tier, concurrent_jobs, storage_gb,
    model_access, third_party_api, lora_training, collaboration, node_editor, api_access,
    max_open_jobs, display_order
) VALUES
    ('starter',    'paid',     25,   5000,  'basic',            1, 20,  'sd_only',       false, false, false, true, false, 10, 1),
    ('pro',        'paid',     75,   15000, 'high_performance', 1, 100, 'flux_included', true,  false, false, true, true,  10, 2),
    ('studio',     'paid',     150,  30000, 'high_performance', 3, 200, 'flux_included', true,  false, false, true, true,  30, 3),
    ('enterprise', 'paid',     NULL, NULL,  'dedicated',        1, 0,   'full',          true,  true,  true,  true, true,  10, 4),
    ('tester',     'internal', 0,    50000, 'basic',            1, 20,  'flux_included', true,  false, false, true, true,  10, 5),
    ('trial',      'trial',    0,    500,   'basic',            1, 5,   'sd_only',       false, false, false, true, false, 10, 6);

-- ------------------------------------------------ projection "subscriptions" (topic: subscriptions)

CREATE TABLE users (
    user_id             TEXT PRIMARY KEY,
    subscription_id     UUID NOT NULL UNIQUE,
    plan                TEXT NOT NULL,          -- the plan whose entitlements apply now
    subscription_status TEXT NOT NULL,          -- trialing | active | past_due | ended
    created_at          TIMESTAMPTZ NOT NULL,   -- sign-up (the trial's start)
    updated_at          TIMESTAMPTZ NOT NULL,
    position            BIGINT NOT NULL
);

CREATE TABLE user_subscriptions (
    subscription_id        UUID PRIMARY KEY,
    user_id                TEXT NOT NULL UNIQUE,  -- one subscription aggregate per user
    plan                   TEXT NOT NULL,         -- subscribed plan (kept after it ends)
    status                 TEXT NOT NULL,
    external_id            TEXT,                  -- Stripe subscription id
    customer_id            TEXT,                  -- Stripe customer id
    stripe_synced_at       TIMESTAMPTZ,           -- newest Stripe object state applied
    custom_terms           JSONB,                 -- negotiated (enterprise) terms
    period_start           TIMESTAMPTZ NOT NULL,
    period_end             TIMESTAMPTZ NOT NULL,
    cancel_at              TIMESTAMPTZ,           -- scheduled cancellation
    trial_started_at       TIMESTAMPTZ NOT NULL,
    started_at             TIMESTAMPTZ,           -- the paid subscription's start
    last_invoice_id        TEXT,
    last_renewed_at        TIMESTAMPTZ,
    last_failed_invoice_id TEXT,
    plan_changed_by        TEXT,                  -- last admin plan change, for the audit
    plan_change_reason     TEXT,
    ended_at               TIMESTAMPTZ,
    end_reason             TEXT,
    updated_at             TIMESTAMPTZ NOT NULL,
    position               BIGINT NOT NULL
);

-- The subscriptions projection's own copy of account -> user, from CreditAccount.Opened: tester
-- credit grants arrive on the credits topic, unordered with the subscription's events.
CREATE TABLE credit_account_owners (
    account_id UUID PRIMARY KEY,
    user_id    TEXT NOT NULL,
    opened_at  TIMESTAMPTZ NOT NULL,
    position   BIGINT NOT NULL
);

-- Audit of tester access: one row per admin event, either the plan change to "tester"
-- (kind 'plan') or a tester credit grant (kind 'credits', with its lot and validity window).
CREATE TABLE test_plan_grants (
    event_id    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('plan', 'credits')),
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    granted_at  TIMESTAMPTZ NOT NULL,
    position    BIGINT NOT NULL,
    from_plan   TEXT,           -- kind 'plan'
    grant_id    TEXT,           -- kind 'credits': the admin's grant id (lot reference)
    lot_id      TEXT,
    amount_mc   BIGINT,
    valid_from  TIMESTAMPTZ,
    valid_until TIMESTAMPTZ
);
CREATE INDEX test_plan_grants_user ON test_plan_grants (user_id, position);

-- ---------------------------------------------------------- projection "ledger" (topic: credits)

-- One row per credit account. available_mc is the balance of the posting account
-- user:<id>:available (every lot's remainder, including lots not yet valid or past their
-- validity but not yet expired); a query computes what is spendable at a given time.
-- Invariant: granted + refunded = available + held + consumed + expired + debited.
CREATE TABLE balances (
    user_id      TEXT PRIMARY KEY,
    account_id   UUID NOT NULL UNIQUE,   -- resolves later credit events to their user
    available_mc BIGINT NOT NULL DEFAULT 0,
    held_mc      BIGINT NOT NULL DEFAULT 0,
    granted_mc   BIGINT NOT NULL DEFAULT 0,  -- grants and positive adjustments
    consumed_mc  BIGINT NOT NULL DEFAULT 0,  -- charged by settled jobs (before refunds)
    refunded_mc  BIGINT NOT NULL DEFAULT 0,  -- charges given back
    expired_mc   BIGINT NOT NULL DEFAULT 0,
    debited_mc   BIGINT NOT NULL DEFAULT 0,  -- negative adjustments
    lot_count    INTEGER NOT NULL DEFAULT 0, -- numbers the next lot (credit_lots.seq)
    low_balance  BOOLEAN NOT NULL DEFAULT false,  -- warned: below the plan's threshold
    low_balance_threshold_mc BIGINT,
    opened_at    TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    position     BIGINT NOT NULL
);

-- Mirrors domain.credits.Lot. Lot ids are unique per account, not globally.
-- Invariant: amount + refunded = remaining + held + consumed + expired + debited.
CREATE TABLE credit_lots (
    user_id          TEXT NOT NULL,
    lot_id           TEXT NOT NULL,
    seq              INTEGER NOT NULL,      -- grant order within the account
    source           TEXT NOT NULL,         -- subscription | trial | tester | purchase | admin | refund
    amount_mc        BIGINT NOT NULL,
    remaining_mc     BIGINT NOT NULL,
    held_mc          BIGINT NOT NULL DEFAULT 0,
    consumed_mc      BIGINT NOT NULL DEFAULT 0,
    expired_mc       BIGINT NOT NULL DEFAULT 0,
    debited_mc       BIGINT NOT NULL DEFAULT 0,
    refunded_mc      BIGINT NOT NULL DEFAULT 0,
    valid_from       TIMESTAMPTZ NOT NULL,
    valid_until      TIMESTAMPTZ,           -- NULL: never expires
    reference        TEXT NOT NULL,
    actor            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    expired          BOOLEAN NOT NULL DEFAULT false,  -- the expiry event has happened
    granted_at       TIMESTAMPTZ NOT NULL,
    created_position BIGINT NOT NULL,
    position         BIGINT NOT NULL,
    PRIMARY KEY (user_id, lot_id)
);
-- The expirer's work list: lots past their validity that have not expired yet.
CREATE INDEX credit_lots_due ON credit_lots (valid_until) WHERE NOT expired AND valid_until IS NOT NULL;

-- Statement lines: one per credit event that moves money.
CREATE TABLE credit_transactions (
    event_id           TEXT PRIMARY KEY,     -- envelope id "<account id>:<version>"
    user_id            TEXT NOT NULL,
    position           BIGINT NOT NULL,
    occurred_at        TIMESTAMPTZ NOT NULL,
    kind               TEXT NOT NULL,        -- grant | reserve | settle | release | expire | adjust | refund
    job_id             TEXT,
    lot_id             TEXT,                 -- the lot a grant created or an expiry closed
    amount_mc          BIGINT NOT NULL,      -- net change of the available balance
    held_change_mc     BIGINT NOT NULL,
    available_after_mc BIGINT NOT NULL,      -- running balances after this line
    held_after_mc      BIGINT NOT NULL,
    description        TEXT NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, position DESC);
CREATE INDEX credit_transactions_job ON credit_transactions (user_id, job_id) WHERE job_id IS NOT NULL;

-- Double entry (domain.postings): the postings of every event sum to zero.
CREATE TABLE postings (
    event_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,   -- order within the event
    user_id     TEXT NOT NULL,
    position    BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    account     TEXT NOT NULL,      -- user:<id>:available | user:<id>:held | revenue | expired | funding:<source>
    amount_mc   BIGINT NOT NULL,
    lot_id      TEXT,
    job_id      TEXT,
    PRIMARY KEY (event_id, seq)
);
CREATE INDEX postings_user ON postings (user_id, position);

-- ---------------------------------------------------------------- projection "jobs" (topic: jobs)

CREATE TABLE jobs (
    job_id             UUID PRIMARY KEY,
    user_id            TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    status             TEXT NOT NULL,   -- submitted | accepted | rejected | dispatched | running | completed | failed | cancelled
    model              TEXT NOT NULL,
    tier               TEXT NOT NULL,
    steps              INTEGER NOT NULL,
    width              INTEGER NOT NULL,
    height             INTEGER NOT NULL,
    batch_size         INTEGER NOT NULL,
    seed               BIGINT NOT NULL,
    parameters         JSONB NOT NULL,  -- as submitted (prompt, guidance, scheduler, ...)
    hold_id            TEXT,            -- the credit hold (accepted jobs)
    hold_mc            BIGINT NOT NULL DEFAULT 0,
    budget_ms          BIGINT NOT NULL DEFAULT 0,
    estimate_ms        BIGINT NOT NULL DEFAULT 0,
    attempt            INTEGER NOT NULL DEFAULT 0,
    worker_id          TEXT,
    gpu                TEXT,
    cancel_requested   BOOLEAN NOT NULL DEFAULT false,
    gpu_ms             BIGINT NOT NULL DEFAULT 0,   -- measured (billed: min(gpu_ms, budget_ms))
    cuda_ms            BIGINT,                      -- audit figure
    charged_mc         BIGINT NOT NULL DEFAULT 0,
    refunded_mc        BIGINT NOT NULL DEFAULT 0,
    image_count        INTEGER NOT NULL DEFAULT 0,
    rejection_reason   TEXT,
    rejection_detail   TEXT,
    failure_reason     TEXT,            -- the last failure (of an attempt or of the job)
    failure_fault      TEXT,            -- platform | user
    retryable          BOOLEAN,
    submitted_at       TIMESTAMPTZ NOT NULL,
    accepted_at        TIMESTAMPTZ,
    dispatched_at      TIMESTAMPTZ,
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    submitted_position BIGINT NOT NULL, -- listing order (newest first)
    position           BIGINT NOT NULL
);
CREATE INDEX jobs_user ON jobs (user_id, submitted_position DESC);
CREATE INDEX jobs_user_status ON jobs (user_id, status, submitted_position DESC);

CREATE TABLE images (
    user_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    job_id        UUID NOT NULL,
    idx           INTEGER NOT NULL,    -- index within the job's batch
    key           TEXT NOT NULL,       -- S3 key of the PNG
    thumbnail_key TEXT NOT NULL,       -- S3 key of the WebP thumbnail
    size_bytes    BIGINT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    position      BIGINT NOT NULL,     -- the job's completion
    deleted_at    TIMESTAMPTZ,
    PRIMARY KEY (user_id, name)
);
CREATE INDEX images_user ON images (user_id, position DESC, idx DESC);
CREATE INDEX images_job ON images (job_id);

-- One row per job whose hold was settled: completed, failed through the user's fault, or
-- cancelled after it started. Platform failures are not billed and leave no usage.
CREATE TABLE usage_records (
    job_id      UUID PRIMARY KEY,
    user_id     TEXT NOT NULL,
    outcome     TEXT NOT NULL,      -- completed | failed | cancelled
    model       TEXT NOT NULL,
    tier        TEXT NOT NULL,
    steps       INTEGER NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    batch_size  INTEGER NOT NULL,
    gpu_ms      BIGINT NOT NULL,    -- measured
    cuda_ms     BIGINT,
    charged_mc  BIGINT NOT NULL,
    refunded_mc BIGINT NOT NULL DEFAULT 0,
    occurred_at TIMESTAMPTZ NOT NULL,
    position    BIGINT NOT NULL
);
CREATE INDEX usage_records_user ON usage_records (user_id, occurred_at);

-- ------------------------------------------------------- written directly by the API (no events)

CREATE TABLE payments (
    payment_id               TEXT PRIMARY KEY,     -- Stripe invoice or payment intent id
    user_id                  TEXT NOT NULL,
    stripe_event_id          TEXT NOT NULL UNIQUE, -- webhook dedup
    stripe_customer_id       TEXT,
    stripe_invoice_id        TEXT,
    stripe_payment_intent_id TEXT,
    kind                     TEXT NOT NULL,        -- subscription | purchase
    status                   TEXT NOT NULL,        -- paid | failed | refunded
    amount_cents             BIGINT NOT NULL,
    currency                 TEXT NOT NULL,
    plan                     TEXT,
    credits_mc               BIGINT,
    description              TEXT NOT NULL DEFAULT '',
    created_at               TIMESTAMPTZ NOT NULL,
    paid_at                  TIMESTAMPTZ
);
CREATE INDEX payments_user ON payments (user_id, created_at DESC);

CREATE TABLE api_keys (
    key_id       UUID PRIMARY KEY,
    user_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL UNIQUE,  -- shown to the user, finds the key on use
    hash         TEXT NOT NULL,         -- the secret is never stored
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at DESC);

-- Billing that follows Stripe's money (issue 17, part 2).
-- The credit Stripe gave back that could not be taken (spent before), netted from the next
-- grant (Subscription.InvoiceCredited / InvoiceMoneyReturned, owed_mc).
ALTER TABLE user_subscriptions ADD COLUMN credit_owed_mc BIGINT NOT NULL DEFAULT 0;

-- Objects without a user (credit notes, charges) find it by their customer.
CREATE INDEX user_subscriptions_customer ON user_subscriptions (customer_id)
    WHERE customer_id IS NOT NULL;

-- Stripe events held for an operator (StripeEventRecord.Quarantined: the object's customer is
-- not the user's) or rejected (StripeEventRecord.Rejected: signed but malformed), with their
-- reason; no effect was applied. The admin's view (GET /v1/admin/billing/held-events).
CREATE TABLE stripe_events_held (
    record_id        UUID PRIMARY KEY,       -- the StripeEventRecord aggregate
    stripe_event_id  TEXT NOT NULL,
    stripe_type      TEXT NOT NULL,
    outcome          TEXT NOT NULL CHECK (outcome IN ('quarantined', 'rejected')),
    user_id          TEXT,
    customer_id      TEXT,
    reason           TEXT NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL,
    position         BIGINT NOT NULL
);
CREATE INDEX stripe_events_held_by_time ON stripe_events_held (received_at DESC, record_id);

-- Idempotency-Key on POST /v1/billing/checkout and /v1/billing/portal: the first answer of a
-- key, replayed for the same body within 24 hours (api/billing/idempotency.py).
CREATE TABLE billing_idempotency (
    user_id      TEXT NOT NULL,
    route        TEXT NOT NULL,
    key          TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    response     JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, route, key)
);

-- Notifications: what users asked to be told, and what the notifier told them.
--
-- None of this is money and none of it is a projection: a preference is the user's current
-- wish (like api_keys, written by the API, not event-sourced), and the notifier's record is
-- the log of its own side effects, which no replay of the event store could rebuild.

-- Written by the API: the address from the user's sign-in (the JWT `email` claim, the last one
-- seen) and the unsubscribe flag (PATCH /v1/me). Read by `pinksea notify` before each e-mail.
CREATE TABLE notification_preferences (
    user_id            TEXT PRIMARY KEY,
    email              TEXT,                        -- NULL: no address known, nothing is sent
    low_balance_emails BOOLEAN NOT NULL DEFAULT true,
    updated_at         TIMESTAMPTZ NOT NULL
);

-- The notifier's own copy of account -> user, from CreditAccount.Opened: an account's events
-- share its Kafka partition, so Opened is always read before the account's LowBalanceReached,
-- whatever the projections have applied so far.
CREATE TABLE notifier_accounts (
    account_id UUID PRIMARY KEY,
    user_id    TEXT NOT NULL
);

-- One row per LowBalanceReached the notifier acted on, keyed by the envelope id: a redelivered
-- event finds its row and sends nothing. The row of a 'sent' e-mail is inserted before the send
-- and committed after it, in one transaction: a concurrent notifier blocks on the key, and a
-- crash between the send and the commit leaves no row, so the redelivery sends again
-- (at-least-once on the wire, exactly once in this table).
CREATE TABLE notifications (
    event_id     TEXT PRIMARY KEY,                  -- <aggregate_id>:<version>
    user_id      TEXT,                              -- NULL: the account's owner is unknown
    kind         TEXT NOT NULL CHECK (kind IN ('low_balance')),
    outcome      TEXT NOT NULL CHECK (outcome IN ('sent', 'skipped', 'failed')),
    reason       TEXT,                              -- skipped / failed: why
    address      TEXT,                              -- where it was sent
    transport_id TEXT,                              -- SMTP Message-ID or SES MessageId
    threshold_mc BIGINT NOT NULL,
    available_mc BIGINT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,              -- the crossing's business time
    recorded_at  TIMESTAMPTZ NOT NULL,
    CHECK ((outcome = 'sent') = (reason IS NULL))
);
CREATE INDEX notifications_user ON notifications (user_id, recorded_at DESC);

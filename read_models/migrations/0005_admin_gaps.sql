-- The operator's admin rules (issue 14, part 7): deactivated accounts, tester windows and
-- enterprise contract periods, as the ledger and subscriptions projections see them.

-- projection "ledger": CreditAccount.Deactivated / Reactivated. The API rebuilds its per-request
-- flags (Redis) from these rows; status_version orders them against the flags the admin's
-- commands write (api/deactivation.py).
ALTER TABLE balances
    ADD COLUMN deactivated       BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN status_version    BIGINT,       -- account version of the last (de|re)activation
    ADD COLUMN status_reason     TEXT,
    ADD COLUMN status_actor      TEXT,
    ADD COLUMN status_changed_at TIMESTAMPTZ;
CREATE INDEX balances_status ON balances (user_id) WHERE status_version IS NOT NULL;

-- projection "subscriptions": the expiry loop's work lists (the aggregate decides).
ALTER TABLE user_subscriptions
    ADD COLUMN tester_until        TIMESTAMPTZ,  -- the tester plan reverts then
    ADD COLUMN contract_period_end TIMESTAMPTZ;  -- end of the last contract period granted
CREATE INDEX user_subscriptions_tester_due ON user_subscriptions (tester_until)
    WHERE tester_until IS NOT NULL;
CREATE INDEX user_subscriptions_contracts ON user_subscriptions (contract_period_end)
    WHERE plan = 'enterprise' AND custom_terms IS NOT NULL;

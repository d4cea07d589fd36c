-- The users' data keys (infra/personal_keys.py): the prompts in the event store are sealed
-- under them, so deleting a user's row erases every prompt they wrote (crypto-shredding)
-- while their events, postings and balances stay. A key is stored wrapped (AES-256-GCM under
-- PINKSEA_PERSONAL_DATA_KEK); the table is no read model: no projection writes or rebuilds it,
-- and it is kept out of the event store's tables (and may live in a database of its own).
CREATE TABLE personal_data_keys (
    user_id     TEXT PRIMARY KEY,
    wrapped_key BYTEA NOT NULL CHECK (length(wrapped_key) = 12 + 32 + 16),  -- nonce, key, tag
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

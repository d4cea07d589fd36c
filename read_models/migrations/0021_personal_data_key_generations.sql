-- A user's data key has a generation (infra/personal_keys.py): the erasure destroys the key
-- but keeps the row, wrapped_key NULL, as the record that generations up to this one are gone;
-- the key made on the user's next need is the next generation. A value sealed since names its
-- generation, so one sealed under a destroyed key reads as erased under the new key instead of
-- failing to open (before, a new key after an erasure made every old prompt look corrupt).
-- Values sealed before this migration name none and are of generation 1.
ALTER TABLE personal_data_keys
    ALTER COLUMN wrapped_key DROP NOT NULL,
    ADD COLUMN generation INTEGER NOT NULL DEFAULT 1 CHECK (generation >= 1),
    ADD COLUMN erased_at TIMESTAMPTZ,
    ADD CONSTRAINT personal_data_keys_erased_has_no_key
        CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL));

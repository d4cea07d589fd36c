-- The ledger's seals (audit/seals.py): each covers the credit events of a contiguous range of
-- event-store positions, (previous seal's last_position, last_position], with their Merkle
-- tree head and the previous seal's root: a chain an auditor checks offline. Written only by
-- `pinksea ledger seal`, never rebuilt (a seal is a published statement, not a read model).
CREATE TABLE ledger_seals (
    seq            BIGINT PRIMARY KEY CHECK (seq > 0),
    first_position BIGINT NOT NULL,      -- exclusive: the previous seal's last_position
    last_position  BIGINT NOT NULL CHECK (last_position >= first_position),
    leaf_count     BIGINT NOT NULL CHECK (leaf_count >= 0),
    root           TEXT NOT NULL,        -- hex SHA-256
    previous_root  TEXT,                 -- null on the first seal only
    sealed_at      TIMESTAMPTZ NOT NULL,
    document       JSONB NOT NULL,       -- the signed seal, exactly as published
    UNIQUE (last_position)
);

-- Bookkeeping of the streaming layer: where the relay is, where each projection is.

-- The relay's position in the event store's notification log: every event up to it is
-- acknowledged by Kafka. Written only after the broker acknowledged (crash -> re-send).
CREATE TABLE relay_positions (
    relay       TEXT PRIMARY KEY,
    position    BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- After each acknowledged batch: the highest Kafka offset written so far in every partition.
-- Every event at or below `position` lies at or below these offsets, so a projection whose
-- consumed offsets pass them has applied everything up to `position` (read-your-writes).
CREATE TABLE relay_checkpoints (
    position     BIGINT PRIMARY KEY,
    offsets      JSONB NOT NULL,          -- {"<topic>": {"<partition>": <offset>}}
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A projection's next Kafka offset per partition, committed with its writes.
CREATE TABLE projection_positions (
    projection   TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition    INT NOT NULL,
    next_offset  BIGINT NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);

-- The last version of each aggregate a projection applied: redelivered events are skipped.
CREATE TABLE projection_versions (
    projection    TEXT NOT NULL,
    aggregate_id  UUID NOT NULL,
    version       INT NOT NULL,
    PRIMARY KEY (projection, aggregate_id)
);

-- Per projection: the highest event-store position applied, and a generation that a rebuild
-- bumps so the live runner re-seeks to the positions the rebuild handed over.
CREATE TABLE projection_state (
    projection   TEXT PRIMARY KEY,
    position     BIGINT NOT NULL DEFAULT 0,
    generation   INT NOT NULL DEFAULT 0,
    rebuilt_at   TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Queue position and ETA in a job's view (issue 19, part 4; read_models/queue.py), from the
-- jobs read model itself: an accepted job waits in its tier's queue in the order of the event
-- that queued it (Accepted or AttemptFailed), which is its row's last position; the ETA's basis
-- is the run times of the tier's recently completed jobs.
CREATE INDEX jobs_tier_status ON jobs (tier, status, position);
CREATE INDEX jobs_tier_completed ON jobs (tier, finished_at DESC) WHERE status = 'completed';

-- The key the API processes sign short-lived stream tokens with (api/stream_tokens.py): made
-- here once, from two random UUIDs (PostgreSQL's strong random source; 244 random bits), and
-- read by every API process, so a token from one process is accepted by all. Replace the row
-- to invalidate every outstanding token.
CREATE TABLE api_signing_keys (
    name       TEXT PRIMARY KEY,
    secret     BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO api_signing_keys (name, secret)
VALUES ('stream-token', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

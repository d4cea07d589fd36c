-- User models (issue 15, part 4): the LoRAs users upload (safetensors only) and name in jobs.
-- projection "user_models": one row per UserModel aggregate, from UserModel.Requested on.
-- Verified models that are not deleted count in the user's storage quota beside images and
-- uploads.
CREATE TABLE user_models (
    model_id       UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    key            TEXT NOT NULL,          -- models/users/{user_id}/{model_id}.safetensors
    name           TEXT NOT NULL,
    family         TEXT NOT NULL,          -- sd1.5 | sdxl | flux: the base models it fits
    size_bytes_max BIGINT NOT NULL,        -- the plan's limit when the POST was handed out
    status         TEXT NOT NULL,          -- pending | verified | rejected
    sha256         TEXT,                   -- the verified file's digest (hex)
    size_bytes     BIGINT NOT NULL DEFAULT 0,
    tensors        INTEGER NOT NULL DEFAULT 0,
    rejection      TEXT,
    requested_at   TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ,            -- verified or rejected
    deleted_at     TIMESTAMPTZ,
    requested_position BIGINT NOT NULL,    -- the list's sort key (newest first)
    position       BIGINT NOT NULL         -- the model's newest event
);
CREATE INDEX user_models_user ON user_models (user_id, requested_position DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX user_models_quota ON user_models (user_id)
    WHERE status = 'verified' AND deleted_at IS NULL;

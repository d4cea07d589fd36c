-- Uploads (issue 15, part 1): the input images users send for image-to-image and inpainting.
-- projection "uploads": one row per Upload aggregate, from Upload.Requested on. Completed
-- uploads that are not deleted count in the user's storage quota beside their images.
CREATE TABLE uploads (
    upload_id      UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    key            TEXT NOT NULL,          -- users/{user_id}/uploads/{upload_id}.<ext>
    content_type   TEXT NOT NULL,          -- as declared, and checked against the bytes
    size_bytes_max BIGINT NOT NULL,        -- the plan's limit when the POST was handed out
    status         TEXT NOT NULL,          -- pending | completed | rejected
    format         TEXT,                   -- read from the bytes (PNG, JPEG, WEBP)
    width          INTEGER,
    height         INTEGER,
    size_bytes     BIGINT NOT NULL DEFAULT 0,
    rejection      TEXT,
    requested_at   TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ,            -- completed or rejected
    deleted_at     TIMESTAMPTZ,
    requested_position BIGINT NOT NULL,    -- the list's sort key (newest first)
    position       BIGINT NOT NULL         -- the upload's newest event
);
CREATE INDEX uploads_user ON uploads (user_id, requested_position DESC) WHERE deleted_at IS NULL;
CREATE INDEX uploads_quota ON uploads (user_id) WHERE status = 'completed' AND deleted_at IS NULL;

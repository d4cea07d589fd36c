-- Uploads in the image gallery (issue 15): a completed upload is one of its user's images, as
-- InvokeAI lists it (image_origin 'external', image_category 'user'), named by its upload id
-- (the name a job's init_image takes). projection "jobs", from the Upload events:
-- Upload.Requested records the upload's owner and key (Upload.Completed carries neither),
-- Upload.Completed writes the image row, Upload.Deleted marks it deleted. An image row comes
-- from exactly one of a job (job_id) or an upload (upload_id); an upload has no thumbnail of
-- its own, so its thumbnail_key is its key. The storage quota counts an upload once, through
-- the uploads table, never through its image row.
ALTER TABLE images
    ALTER COLUMN job_id DROP NOT NULL,
    ADD COLUMN upload_id UUID,
    ADD CONSTRAINT images_made_by_a_job_or_uploaded CHECK ((job_id IS NULL) <> (upload_id IS NULL));
CREATE UNIQUE INDEX images_upload ON images (upload_id) WHERE upload_id IS NOT NULL;

CREATE TABLE upload_owners (
    upload_id    UUID PRIMARY KEY,
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,        -- users/{user_id}/uploads/{upload_id}.<ext>
    requested_at TIMESTAMPTZ NOT NULL,
    position     BIGINT NOT NULL       -- the newest of the upload's events applied here
);

-- The uploads made before: the jobs projection skipped their events, so their owners and
-- images come from the uploads projection's rows once (`pinksea projections rebuild jobs`
-- derives the same rows from the events).
INSERT INTO upload_owners (upload_id, user_id, key, requested_at, position)
SELECT upload_id, user_id, key, requested_at, position FROM uploads;
INSERT INTO images (
    user_id, name, job_id, upload_id, idx, key, thumbnail_key, size_bytes, width, height,
    created_at, position, image_category, image_origin, starred, is_intermediate, deleted_at
)
SELECT user_id, upload_id::text, NULL, upload_id, 0, key, key, size_bytes, width, height,
    finished_at, position, 'user', 'external', false, false, deleted_at
FROM uploads WHERE status = 'completed';

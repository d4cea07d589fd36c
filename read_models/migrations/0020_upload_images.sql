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
-- images come from the uploads projection's rows, with the versions it applied recorded as the
-- jobs projection's, so that it goes on from there (an event the uploads projection had not
-- applied yet is applied when it arrives; one it had is skipped). One statement: one snapshot
-- of the uploads projection's rows and versions, written together by it. An upload's image
-- sorts at its newest event, its completion unless it was deleted (and then is not listed);
-- `pinksea projections rebuild jobs` derives the same rows from the events.
WITH projected AS (
    SELECT u.upload_id, u.user_id, u.key, u.status, u.size_bytes, u.width, u.height,
        u.requested_at, u.finished_at, u.deleted_at, u.position, v.version
    FROM uploads u
    JOIN projection_versions v ON v.projection = 'uploads' AND v.aggregate_id = u.upload_id
), owners AS (
    INSERT INTO upload_owners (upload_id, user_id, key, requested_at, position)
    SELECT upload_id, user_id, key, requested_at, position FROM projected
), versions AS (
    INSERT INTO projection_versions (projection, aggregate_id, version)
    SELECT 'jobs', upload_id, version FROM projected
)
INSERT INTO images (
    user_id, name, job_id, upload_id, idx, key, thumbnail_key, size_bytes, width, height,
    created_at, position, image_category, image_origin, starred, is_intermediate, deleted_at
)
SELECT user_id, upload_id::text, NULL, upload_id, 0, key, key, size_bytes, width, height,
    finished_at, position, 'user', 'external', false, false, deleted_at
FROM projected WHERE status = 'completed';

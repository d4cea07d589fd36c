-- Image organisation (issue 15, part 5): what an image is for and where it came from
-- (InvokeAI's image_category and image_origin), and the owner's flags: starred, and
-- is_intermediate (image lists leave intermediates out unless asked for them).
-- projection "jobs": GenerationJob.Completed writes the category and origin of what a job
-- produces (domain/job_events.py); ImageStarred / ImageUnstarred and ImageMarkedIntermediate /
-- ImageUnmarkedIntermediate set the flags. Rows written before were all produced images.
ALTER TABLE images
    ADD COLUMN image_category  TEXT NOT NULL DEFAULT 'general',
    ADD COLUMN image_origin    TEXT NOT NULL DEFAULT 'internal',
    ADD COLUMN starred         BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN is_intermediate BOOLEAN NOT NULL DEFAULT false;
-- From now on the projection writes the category and origin itself.
ALTER TABLE images ALTER COLUMN image_category DROP DEFAULT, ALTER COLUMN image_origin DROP DEFAULT;
CREATE INDEX images_user_starred ON images (user_id, position DESC, idx DESC)
    WHERE starred AND deleted_at IS NULL;

-- An upload's purpose (issue 15): Upload.Requested records what the image is for, `init` (an
-- image to start from) or `mask` (an inpainting mask), and the gallery lists a completed
-- upload under its category, InvokeAI's: `user` or `mask`. projection "jobs": upload_owners
-- keeps the category from Upload.Requested for Upload.Completed's image row (Completed carries
-- no purpose). Every upload requested before it is an init image, category `user`, as its
-- image row already says.
ALTER TABLE upload_owners ADD COLUMN image_category TEXT NOT NULL DEFAULT 'user';

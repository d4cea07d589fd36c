-- Boards (issue 15, part 5): the user's named collections of images (InvokeAI's boards).
-- projection "boards": one row per Board aggregate, and one per image a board holds. An image
-- is on at most one board in the event store; while a move's two events are applied one after
-- the other (they may arrive on two partitions), it can briefly show on both.
CREATE TABLE boards (
    board_id         UUID PRIMARY KEY,
    user_id          TEXT NOT NULL,
    name             TEXT NOT NULL,
    image_count      INTEGER NOT NULL DEFAULT 0 CHECK (image_count >= 0),
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    deleted_at       TIMESTAMPTZ,
    created_position BIGINT NOT NULL,      -- the list's sort key (newest first)
    position         BIGINT NOT NULL       -- the board's newest event
);
CREATE INDEX boards_user ON boards (user_id, created_position DESC) WHERE deleted_at IS NULL;

CREATE TABLE board_images (
    board_id   UUID NOT NULL REFERENCES boards (board_id),
    user_id    TEXT NOT NULL,
    image_name TEXT NOT NULL,
    added_at   TIMESTAMPTZ NOT NULL,
    position   BIGINT NOT NULL,
    PRIMARY KEY (board_id, image_name)
);
CREATE INDEX board_images_image ON board_images (user_id, image_name);

"""Projection "boards": one row per board, and one per image on a board.

Every statement starts with $1 board id, $2 occurred_at, $3 position. A board's later events
update its row, which must exist (the runner delivers an aggregate's events in order). A
deleted board keeps its row, marked, and loses its images (they are on no board then).
``name`` is stored as the event holds it: sealed under the user's data key (plaintext for a
board recorded before sealing), which only the API opens (domain/boards.py), so a rebuild
after the user's erasure reads "[erased]" like the row it replaces.
"""

from __future__ import annotations

from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import EventStatements, TableProjection

_OPENED = """
INSERT INTO boards (
    board_id, user_id, name, created_at, updated_at, created_position, position
)
VALUES ($1, $4, $5, $2, $2, $3, $3)
"""


def _update(assignments: str, *more: str) -> str:
    """Update the board (which must exist), and run the ``more`` CTEs that read ``board``."""
    ctes = "".join(f",\n{cte}" for cte in more)
    return f"""
WITH board AS (
    UPDATE boards SET {assignments}, updated_at = $2, position = $3 WHERE board_id = $1
    RETURNING *
){ctes}
SELECT read_model_check(
    EXISTS (SELECT 1 FROM board), 'an event of board ' || $1::text || ', never created'
)
"""


_STATEMENTS: EventStatements = {
    "Board.Opened": (_OPENED, lambda ev: (ev.user_id, ev.name)),
    "Board.Renamed": (_update("name = $4"), lambda ev: (ev.name,)),
    "Board.ImageAdded": (
        _update(
            "image_count = image_count + 1",
            "added AS (INSERT INTO board_images (board_id, user_id, image_name, added_at, "
            "position) SELECT board_id, user_id, $4, $2, $3 FROM board)",
        ),
        lambda ev: (ev.image_name,),
    ),
    "Board.ImageRemoved": (
        _update(
            "image_count = image_count - 1",
            "removed AS (DELETE FROM board_images WHERE board_id = $1 AND image_name = $4)",
        ),
        lambda ev: (ev.image_name,),
    ),
    "Board.Deleted": (
        _update(
            "deleted_at = $2, image_count = 0",
            "removed AS (DELETE FROM board_images WHERE board_id = $1)",
        ),
        lambda ev: (),
    ),
}


class BoardsProjection(TableProjection):
    name = "boards"
    event_statements = _STATEMENTS
    topics = (JOBS_TOPIC,)
    tables = ("board_images", "boards")  # the order a rebuild empties them (references)

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "Board"

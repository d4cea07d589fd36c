"""The owner's commands on a job's images (the rules are domain/job_images.py's): delete one,
star it or mark it intermediate. A deleted image also leaves the board it was filed on.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.boards import Board
from domain.commands.results import CommandResult
from domain.commands.store import CommandStore, command


class ImageCommands(CommandStore):
    @command
    def delete_image(self, job_id: UUID, *, user_id: str, name: str, at: datetime) -> CommandResult:
        """The owner deletes one of a job's images (its S3 objects are the caller's to remove).
        A repeated delete changes nothing; an unknown job or image, or another user's, is
        NotFound."""
        job = self.job(job_id)
        if not job.delete_image(name=name, user_id=user_id, at=at):
            return CommandResult(False)
        # A deleted image leaves its board (it would count against the board's bound).
        pointer = job.image_boards.get(name)
        board = self.find(UUID(pointer)) if pointer is not None else None
        if isinstance(board, Board) and board.holds(name):
            board.remove_image(name, at)
            self.save(job, board)
        else:
            self.save(job)
        return CommandResult(True)

    @command
    def flag_image(
        self,
        job_id: UUID,
        *,
        user_id: str,
        name: str,
        starred: bool | None = None,
        is_intermediate: bool | None = None,
        at: datetime,
    ) -> CommandResult:
        """The owner stars an image or marks it intermediate (None: that flag stays); asking
        for the flags it has changes nothing. An unknown job or image, a deleted one or
        another user's, is NotFound."""
        job = self.job(job_id)
        changed = job.flag_image(
            name=name, user_id=user_id, starred=starred, is_intermediate=is_intermediate, at=at
        )
        if changed:
            self.save(job)
        return CommandResult(changed)

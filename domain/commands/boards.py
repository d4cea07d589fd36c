"""The commands on boards (domain/boards.py): create, rename, delete, file and unfile images.

Filing an image writes three aggregates in one transaction: the board it goes on, the board it
leaves (when it was on another), and what made the image, which records the board: its job, or
the upload that is the image (an upload's image is named by its id). Every filing writes that
one, so two concurrent filings of one image conflict and the second, retried, sees the first:
an image is never on two boards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain import ids
from domain.boards import Board
from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore, command
from domain.errors import IdempotencyConflict, NotFound
from domain.jobs import GenerationJob
from domain.parameters import is_upload_ref
from domain.personal_data import Sealer
from domain.uploads import Upload

JOB_ID_CHARS = 36  # an image's name is its job's id (a UUID's text), a dash, an index

# What recorded an image and records the board it is filed on: its job, or the upload it is.
ImageMaker = GenerationJob | Upload


@dataclass(frozen=True)
class BoardResult(Result):
    board_id: UUID
    name: str  # as recorded: sealed under the user's key (the API opens it)
    changed: bool  # False: a repetition, nothing new recorded


class BoardCommands(CommandStore):
    @command
    def create_board(
        self,
        user_id: str,
        *,
        request_key: str,
        name: str,
        at: datetime,
        sealer: Sealer | None = None,
    ) -> BoardResult:
        """The same request key again finds the same board (a different name is a conflict).
        ``sealer``: the user's data key, which seals the name (domain/boards.py); the API
        always passes it."""
        existing = self.find(ids.board_id(user_id, request_key))
        if existing is not None:
            assert isinstance(existing, Board) and existing.user_id == user_id  # id has user
            if existing.deleted:
                raise IdempotencyConflict(
                    "this Idempotency-Key created a board that was deleted since; use a new key"
                )
            if not existing.was_created_as(name, sealer):
                raise IdempotencyConflict(
                    "this Idempotency-Key created a board of another name; use a new key"
                )
            return BoardResult(board_id=existing.id, name=existing.name, changed=False)
        board = Board.create(
            user_id=user_id, request_key=request_key, name=name, at=at, sealer=sealer
        )
        self.save(board)
        return BoardResult(board_id=board.id, name=board.name, changed=True)

    @command
    def rename_board(
        self,
        user_id: str,
        board_uuid: UUID,
        *,
        name: str,
        at: datetime,
        sealer: Sealer | None = None,
    ) -> BoardResult:
        board = self.board(user_id, board_uuid)
        changed = board.rename(name, at, sealer)
        self.save(board if changed else None)
        return BoardResult(board_id=board.id, name=board.name, changed=changed)

    @command
    def delete_board(self, user_id: str, board_uuid: UUID, *, at: datetime) -> CommandResult:
        """Its images stay, on no board. Deleting it again is NotFound."""
        board = self.board(user_id, board_uuid)
        board.delete(at)
        self.save(board)
        return CommandResult(True)

    @command
    def add_board_image(
        self, user_id: str, board_uuid: UUID, *, image_name: str, at: datetime
    ) -> CommandResult:
        """Put one of the user's images (a job's, or an upload) on the board, taking it off the
        board it was on."""
        board = self.board(user_id, board_uuid)
        maker = self.image_maker(user_id, image_name)
        previous = self.board_of(maker, image_name)
        if previous is not None and previous.id == board.id:
            return CommandResult(False)
        board.add_image(image_name, at)
        if previous is not None:
            previous.remove_image(image_name, at)
        if isinstance(maker, Upload):
            maker.file(board_id=board.id, at=at)
        else:
            maker.file_image(name=image_name, board_id=board.id, at=at)
        self.save(board, maker, *([previous] if previous is not None else []))
        return CommandResult(True)

    @command
    def remove_board_image(
        self, user_id: str, board_uuid: UUID, *, image_name: str, at: datetime
    ) -> CommandResult:
        """Take an image off the board (back to uncategorised); NotFound when it is not there.
        The job's pointer stays: a board that does not list the image does not hold it."""
        board = self.board(user_id, board_uuid)
        board.remove_image(image_name, at)
        self.save(board)
        return CommandResult(True)

    # ------------------------------------------------------------------------- reading

    def board(self, user_id: str, board_uuid: UUID) -> Board:
        """The user's board; another user's, a deleted one or none at all is NotFound."""
        board = self.find(board_uuid)
        if not isinstance(board, Board):
            raise NotFound(f"no board {board_uuid}")
        board.ensure_owner(user_id)
        return board

    def image_maker(self, user_id: str, image_name: str) -> ImageMaker:
        """What made one of the user's images: its job, or the upload it is (a completed one).
        Another user's, deleted or unknown: NotFound."""
        unknown = NotFound(f"you have no image {image_name!r}")
        if is_upload_ref(image_name):
            upload = self.find(UUID(image_name))
            if not isinstance(upload, Upload) or upload.user_id != user_id or not upload.usable:
                raise unknown
            return upload
        try:
            job_uuid = UUID(image_name[:JOB_ID_CHARS])
        except ValueError:
            raise unknown from None
        job = self.find(job_uuid)
        if not isinstance(job, GenerationJob) or not job.has_image(image_name, user_id):
            raise unknown
        return job

    def board_of(self, maker: ImageMaker, image_name: str) -> Board | None:
        """The board that holds the image now, if any (its maker's pointer, checked)."""
        if isinstance(maker, Upload):
            pointer = maker.board_id
        else:
            pointer = maker.image_boards.get(image_name)
        if pointer is None:
            return None
        board = self.find(UUID(pointer))
        return board if isinstance(board, Board) and board.holds(image_name) else None

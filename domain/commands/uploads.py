"""The commands on an upload.

An upload is the user's own data, apart from any job and account: each command reads one
``Upload`` and saves it alone (their bodies are every verified object's:
domain/commands/verified_objects.py), but for its deletion, which also takes it off the board
it was filed on (as a job's deleted image leaves its board: domain/commands/images.py). A
completed upload is one of the user's images: its owner flags it (``flag_upload``) and files
it on boards (domain/commands/boards.py). Whether a job may name an upload as its input is
the job's inputs check (domain/commands/job_inputs.py).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.boards import Board
from domain.commands.results import CommandResult
from domain.commands.store import command
from domain.commands.verified_objects import VerifiedObjectCommands, VerifiedObjectResult
from domain.uploads import ImageFacts, Upload, UploadPurpose

UPLOAD_ID_CHARS = 36  # a UUID's text: an image's name is its job's id, a dash, an index


class UploadResult(VerifiedObjectResult):
    @property
    def upload_id(self) -> UUID:
        return self.object_id


class UploadCommands(VerifiedObjectCommands):
    @command
    def request_upload(
        self,
        user_id: str,
        *,
        request_key: str,
        content_type: str,
        at: datetime,
        purpose: UploadPurpose = UploadPurpose.INIT,
    ) -> UploadResult:
        """Record the presigned POST being handed out, with the plan's size limit and what
        the image is for. The same request key again finds the same upload."""
        upload, changed = self._request_object(
            Upload,
            user_id,
            request_key,
            requested=lambda plan: Upload.request(
                user_id=user_id,
                request_key=request_key,
                content_type=content_type,
                size_bytes_max=plan.upload_bytes_max,
                at=at,
                purpose=purpose,
            ),
            ensure_same=lambda upload: upload.ensure_same_request(content_type, purpose),
        )
        return UploadResult.of(upload, changed=changed)

    @command
    def complete_upload(
        self, user_id: str, upload_uuid: UUID, *, facts: ImageFacts, at: datetime
    ) -> UploadResult:
        """Record the verdict on the uploaded object (domain/uploads.py has the rules)."""
        upload, changed = self._complete_object(Upload, user_id, upload_uuid, facts, at)
        return UploadResult.of(upload, changed=changed)

    @command
    def delete_upload(self, user_id: str, upload_uuid: UUID, *, at: datetime) -> CommandResult:
        """The owner deletes an upload (its object is the caller's to remove). Its image leaves
        the board it was on (it would count against the board's bound)."""
        upload = self.upload(user_id, upload_uuid)
        upload.delete(at)
        pointer = upload.board_id
        board = self.find(UUID(pointer)) if pointer is not None else None
        if isinstance(board, Board) and board.holds(upload.image_name):
            board.remove_image(upload.image_name, at)
            self.save(upload, board)
        else:
            self.save(upload)
        return CommandResult(True)

    @command
    def flag_upload(
        self,
        user_id: str,
        upload_uuid: UUID,
        *,
        starred: bool | None = None,
        is_intermediate: bool | None = None,
        at: datetime,
    ) -> CommandResult:
        """The owner stars the upload's image or marks it intermediate (None: that flag stays);
        asking for the flags it has changes nothing. Another user's upload, a deleted one, one
        that is not completed or none at all is NotFound."""
        upload = self.upload(user_id, upload_uuid)
        changed = upload.flag(starred=starred, is_intermediate=is_intermediate, at=at)
        self.save(upload if changed else None)
        return CommandResult(changed)

    # ------------------------------------------------------------------------- reading

    def upload(self, user_id: str, upload_uuid: UUID) -> Upload:
        """The user's upload; another user's, a deleted one or none at all is NotFound."""
        return self.owned(Upload, user_id, upload_uuid)

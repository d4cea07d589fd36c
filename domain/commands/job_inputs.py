"""Every input a job names, checked at once before its submission (and its quote).

A job may name an init image and a mask (an upload of the user's, or one of their images) and
LoRAs (their verified models). Each must be the user's own and usable; the check reads the
event store, saving nothing, and reports every input at fault in one error
(domain/errors.py ``refused_inputs``), each named as the request spells it (``init_image``,
``mask``, ``loras[0].id``): the API answers it as a problem whose ``errors`` list them, so a
client fixes them all in one go. The LoRAs' rules are their commands' (``pinned_loras``).
"""

from __future__ import annotations

from typing import TypeVar
from uuid import UUID

from domain.commands.uploads import UPLOAD_ID_CHARS, UploadCommands
from domain.commands.user_models import UserModelCommands
from domain.errors import FieldProblem, InvalidParameters, NotFound, refused_inputs
from domain.jobs import GenerationJob
from domain.parameters import JobParameters, is_upload_ref

P = TypeVar("P", bound=JobParameters)


class JobInputCommands(UploadCommands, UserModelCommands):
    def checked_job_inputs(self, user_id: str, params: P) -> P:
        """``params`` with each LoRA pinned to its verified file's sha256, once every input it
        names is the user's and usable. Else one error names each one at fault: NotFound when
        one of them is not the user's (or is gone), else InvalidParameters."""
        problems = [
            problem
            for field, ref in (("init_image", params.init_image), ("mask", params.mask))
            if ref is not None and (problem := self._image_problem(user_id, field, ref))
        ]
        pinned, lora_problems = self.pinned_loras(user_id, params)
        problems += lora_problems
        if problems:
            raise refused_inputs(problems)
        return params if not params.loras else params.model_copy(update={"loras": pinned})

    def _image_problem(self, user_id: str, field: str, ref: str) -> FieldProblem | None:
        """What is wrong with ``ref`` as the job's ``field``: None when it is one of the user's
        completed uploads or one of their images, not deleted."""
        missing = FieldProblem((field,), f"you have no image or upload {ref}", NotFound.code)
        if is_upload_ref(ref):
            try:
                upload = self.upload(user_id, UUID(ref))
            except NotFound:  # another user's, deleted or none at all: the same answer
                return missing
            if not upload.usable:
                return FieldProblem(
                    (field,),
                    f"upload {ref} is {upload.status}; only a completed upload can be used "
                    "(POST /v1/uploads/{id}/complete)",
                    InvalidParameters.code,
                )
            return None
        job = self.find(UUID(ref[:UPLOAD_ID_CHARS]))
        if (
            not isinstance(job, GenerationJob)
            or job.user_id != user_id
            or ref in job.deleted_images
            or all(image["name"] != ref for image in job.images)
        ):
            return missing
        return None

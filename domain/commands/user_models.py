"""The commands on a user's model (a LoRA), and the pinning of the LoRAs a job names.

A user model is the user's own data, apart from any job and account: each command reads one
``UserModel`` and saves it alone (their bodies are every verified object's:
domain/commands/verified_objects.py). ``pinned_loras`` reads, saving nothing: the check of a
job's inputs before its submission calls it (domain/commands/job_inputs.py), so a job names only
the user's own verified LoRAs of the job's model family, each with the sha256 of the file that
was verified (the worker loads only those bytes). Whether the plan allows LoRAs at all is
admission's business (``lora_training``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar
from uuid import UUID

from domain.catalog import MODELS, ModelFamily
from domain.commands.results import CommandResult
from domain.commands.store import command
from domain.commands.verified_objects import VerifiedObjectCommands, VerifiedObjectResult
from domain.errors import FieldProblem, InvalidParameters, NotFound, refused_inputs
from domain.parameters import JobParameters, LoraRef
from domain.user_models import DataKey, LoraFacts, UserModel

P = TypeVar("P", bound=JobParameters)


class UserModelResult(VerifiedObjectResult):
    @property
    def model_id(self) -> UUID:
        return self.object_id


class UserModelCommands(VerifiedObjectCommands):
    @command
    def request_user_model(
        self,
        user_id: str,
        *,
        request_key: str,
        name: str,
        family: ModelFamily,
        at: datetime,
        data_key: DataKey | None = None,
    ) -> UserModelResult:
        """Record the presigned POST of a LoRA being handed out, with the plan's size limit
        (InvalidTransition when the plan allows no LoRAs). The same request key again finds
        the same model. ``data_key``: the user's; the event records the name sealed with it
        (domain/user_models.py). The API always passes it."""
        model, changed = self._request_object(
            UserModel,
            user_id,
            request_key,
            requested=lambda plan: UserModel.request(
                user_id=user_id,
                request_key=request_key,
                name=name,
                family=family,
                plan=plan,
                at=at,
                data_key=data_key,
            ),
            ensure_same=lambda model: model.ensure_same_request(name, family, data_key),
        )
        return UserModelResult.of(model, changed=changed)

    @command
    def complete_user_model(
        self, user_id: str, model_uuid: UUID, *, facts: LoraFacts, at: datetime
    ) -> UserModelResult:
        """Record the verdict on the uploaded file (domain/user_models.py has the rules)."""
        model, changed = self._complete_object(UserModel, user_id, model_uuid, facts, at)
        return UserModelResult.of(model, changed=changed)

    @command
    def delete_user_model(self, user_id: str, model_uuid: UUID, *, at: datetime) -> CommandResult:
        """The owner deletes a model (its object is the caller's to remove)."""
        return self._delete_object(UserModel, user_id, model_uuid, at)

    # ------------------------------------------------------------------------- reading

    def user_model(self, user_id: str, model_uuid: UUID) -> UserModel:
        """The user's model; another user's, a deleted one or none at all is NotFound."""
        return self.owned(UserModel, user_id, model_uuid)

    def pin_job_loras(self, user_id: str, params: P) -> P:
        """``params`` with each LoRA's sha256 set from its verified file. One error names every
        LoRA at fault (domain/errors.py ``refused_inputs``): NotFound when one is not the
        user's (or is gone); else InvalidParameters, for one that is the user's but not
        verified, of another family than the job's model, or not the file a sent sha256 names."""
        pinned, problems = self.pinned_loras(user_id, params)
        if problems:
            raise refused_inputs(problems)
        return params if not params.loras else params.model_copy(update={"loras": pinned})

    def pinned_loras(
        self, user_id: str, params: JobParameters
    ) -> tuple[tuple[LoraRef, ...], list[FieldProblem]]:
        """Each LoRA the job names pinned to its verified file's sha256, and the problem of each
        one that cannot be, named as the request names it (``loras[0].id``)."""
        spec = MODELS.get(params.model)
        pinned: list[LoraRef] = []
        problems: list[FieldProblem] = []
        for index, lora in enumerate(params.loras or ()):  # at most LORAS_MAX
            at, invalid = ("loras", index, "id"), InvalidParameters.code
            try:
                model = self.user_model(user_id, lora.id)
            except NotFound:
                problems.append(FieldProblem(at, f"you have no model {lora.id}", NotFound.code))
                continue
            if not model.usable:
                problems.append(
                    FieldProblem(
                        at,
                        f"model {lora.id} is {model.status}; only a verified model can be used "
                        "(POST /v1/models/mine/{id}/complete)",
                        invalid,
                    )
                )
            elif spec is not None and spec.family.value != model.family:
                problems.append(
                    FieldProblem(
                        at,
                        f"model {lora.id} is a {model.family} LoRA; {params.model} is "
                        f"{spec.family.value}",
                        invalid,
                    )
                )
            elif lora.sha256 is not None and lora.sha256 != model.sha256:
                problems.append(
                    FieldProblem(
                        ("loras", index, "sha256"),
                        f"model {lora.id} has sha256 {model.sha256}, not {lora.sha256}",
                        invalid,
                    )
                )
            else:
                pinned.append(lora.model_copy(update={"sha256": model.sha256}))
        assert len(pinned) + len(problems) == len(params.loras or ())
        return tuple(pinned), problems

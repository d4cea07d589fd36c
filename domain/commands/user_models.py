"""The commands on a user's model (a LoRA), and the pinning of the LoRAs a job names.

A user model is the user's own data, apart from any job and account: each command reads one
``UserModel`` and saves it alone (their bodies are every verified object's:
domain/commands/verified_objects.py). ``pin_job_loras`` reads, saving nothing: the API calls it
before a submission, so a job names only the user's own verified LoRAs of the job's model
family, each with the sha256 of the file that was verified (the worker loads only those
bytes). Whether the plan allows LoRAs at all is admission's business (``lora_training``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar
from uuid import UUID

from domain.catalog import MODELS, ModelFamily
from domain.commands.results import CommandResult
from domain.commands.store import command
from domain.commands.verified_objects import VerifiedObjectCommands, VerifiedObjectResult
from domain.errors import InvalidParameters, NotFound
from domain.parameters import JobParameters
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
        """``params`` with each LoRA's sha256 set from its verified file. NotFound when one is
        not the user's (or is gone); InvalidParameters when it is the user's but not verified,
        of another family than the job's model, or not the file a sent sha256 names."""
        if not params.loras:
            return params
        spec = MODELS.get(params.model)
        pinned = []
        for lora in params.loras:
            try:
                model = self.user_model(user_id, lora.id)
            except NotFound:
                raise NotFound(f"loras: you have no model {lora.id}") from None
            if not model.usable:
                raise InvalidParameters(
                    f"loras: model {lora.id} is {model.status}; only a verified model can be "
                    "used (POST /v1/models/mine/{id}/complete)"
                )
            if spec is not None and spec.family.value != model.family:
                raise InvalidParameters(
                    f"loras: model {lora.id} is a {model.family} LoRA; {params.model} is "
                    f"{spec.family.value}"
                )
            if lora.sha256 is not None and lora.sha256 != model.sha256:
                raise InvalidParameters(
                    f"loras: model {lora.id} has sha256 {model.sha256}, not {lora.sha256}"
                )
            pinned.append(lora.model_copy(update={"sha256": model.sha256}))
        return params.model_copy(update={"loras": tuple(pinned)})

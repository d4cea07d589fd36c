"""The commands on a user's model (a LoRA), and the pinning of the LoRAs a job names.

A user model is the user's own data, apart from any job and account: each command reads one
``UserModel`` and saves it alone. ``pin_job_loras`` reads, saving nothing: the API calls it
before a submission, so a job names only the user's own verified LoRAs of the job's model
family, each with the sha256 of the file that was verified (the worker loads only those
bytes). Whether the plan allows LoRAs at all is admission's business (``lora_training``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from domain.catalog import MODELS, ModelFamily
from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore, command
from domain.errors import InvalidParameters, NotFound
from domain.parameters import JobParameters
from domain.user_models import LoraFacts, UserModel, user_model_id

P = TypeVar("P", bound=JobParameters)


@dataclass(frozen=True)
class UserModelResult(Result):
    model_id: UUID
    key: str
    size_bytes_max: int
    status: str
    rejection: str | None
    changed: bool  # False: a repetition, nothing new recorded


class UserModelCommands(CommandStore):
    @command
    def request_user_model(
        self,
        user_id: str,
        *,
        request_key: str,
        name: str,
        family: ModelFamily,
        at: datetime,
    ) -> UserModelResult:
        """Record the presigned POST of a LoRA being handed out, with the plan's size limit
        (InvalidTransition when the plan allows no LoRAs). The same request key again finds
        the same model."""
        existing = self.find(user_model_id(user_id, request_key))
        if existing is not None:
            assert isinstance(existing, UserModel)
            existing.ensure_owner(user_id)
            existing.ensure_same_request(name, family)
            return _result(existing, changed=False)
        plan = self.subscription(user_id).plan
        model = UserModel.request(
            user_id=user_id, request_key=request_key, name=name, family=family, plan=plan, at=at
        )
        self.save(model)
        return _result(model, changed=True)

    @command
    def complete_user_model(
        self, user_id: str, model_uuid: UUID, *, facts: LoraFacts, at: datetime
    ) -> UserModelResult:
        """Record the verdict on the uploaded file (domain/user_models.py has the rules)."""
        model = self.user_model(user_id, model_uuid)
        changed = model.complete(facts, at)
        self.save(model if changed else None)
        return _result(model, changed=changed)

    @command
    def delete_user_model(self, user_id: str, model_uuid: UUID, *, at: datetime) -> CommandResult:
        """The owner deletes a model (its object is the caller's to remove)."""
        model = self.user_model(user_id, model_uuid)
        model.delete(at)
        self.save(model)
        return CommandResult(True)

    # ------------------------------------------------------------------------- reading

    def user_model(self, user_id: str, model_uuid: UUID) -> UserModel:
        """The user's model; another user's, a deleted one or none at all is NotFound."""
        model = self.find(model_uuid)
        if not isinstance(model, UserModel):
            raise NotFound(f"no model {model_uuid}")
        model.ensure_owner(user_id)
        return model

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


def _result(model: UserModel, *, changed: bool) -> UserModelResult:
    return UserModelResult(
        model_id=model.id,
        key=model.key,
        size_bytes_max=model.size_bytes_max,
        status=model.status,
        rejection=model.rejection,
        changed=changed,
    )

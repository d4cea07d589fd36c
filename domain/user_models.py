"""UserModel: a LoRA a user uploads to apply to a base model, from the presigned POST to its
verdict.

A verified object, like an upload (domain/verified_objects.py has the flow): the API hands out
a presigned POST (``Requested``: the key ``models/users/{user_id}/{model_id}.safetensors``,
the most bytes allowed, the user's name for it and its base family), and completing it has
the API describe what it read back (``LoraFacts``: its sha256, its size, the tensor names in
its safetensors header, or why the header would not parse). The rules live here: safetensors
only (a pickle, whatever its name, never parses as one, and is never unpickled), only on a
plan with ``lora_training``, every tensor a LoRA weight, the names those of the declared
base family. ``Verified`` is its accepted verdict: the file's sha256 is recorded, and a worker
loads only those exact bytes.

The name is what a person wrote, so ``Requested`` records it sealed under the user's data key
(domain/personal_data.py), as a job's prompts are: readers open it with the key (or read
``[erased]`` once the key is gone). A name recorded before sealing is plaintext and reads as
it is (``is_sealed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.catalog import ModelFamily
from domain.errors import IdempotencyConflict, InvalidTransition
from domain.personal_data import Opener, Sealer, is_sealed
from domain.plans import Plan
from domain.units import require_aware
from domain.verified_objects import PENDING, REJECTED, VerifiedObject, object_id

# A LoRA of SD-1.5 is 10-150 MB, of SDXL up to about 800 MB; Flux's run larger still. One cap
# for every plan that allows LoRAs (``Plan.lora_training``): the presigned POST's
# content-length-range, checked again on completion.
LORA_BYTES_MAX = 1024**3
NAME_CHARS_MAX = 100
NAME_FIELD = "model_name"  # what the name is sealed as (the seal is bound to its field)
TENSORS_MAX = 10_000  # an SDXL LoRA has about 2 200 tensors; more is no LoRA
SHA256_HEX_CHARS = 64

# What a tensor name says about the network it patches. A UNet's blocks appear in diffusers'
# names (``unet.down_blocks.0...``, older files bare ``down_blocks.0...``) and kohya's
# (``lora_unet_down_blocks_0_...``, ``lora_unet_input_blocks_...``); SDXL adds a second text
# encoder; Flux has a transformer of double and single blocks and no UNet.
_UNET_MARKS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks")
_SDXL_MARKS = ("text_encoder_2.", "lora_te2_")
_FLUX_MARKS = ("double_blocks", "single_blocks", "single_transformer_blocks")
_FLUX_PREFIXES = ("transformer.", "lora_transformer_")
NAMES_SHOWN = 3  # a rejection names this many offending tensors


class UserModelStatus(StrEnum):
    PENDING = PENDING  # the presigned POST was handed out
    VERIFIED = "verified"
    REJECTED = REJECTED


class DataKey(Sealer, Opener, Protocol):
    """The user's data key (infra/personal_keys.py): seals a model's name and opens it again."""


def user_model_id(user_id: str, request_key: str) -> UUID:
    """The model's id from the user and the request's key: the same request again finds the
    same model."""
    return object_id("user-model", user_id, request_key)


def user_models_prefix(user_id: str) -> str:
    """Every object of the user's models, and the only place a worker loads one from."""
    return f"models/users/{user_id}/"


def user_model_key(user_id: str, model_uuid: UUID) -> str:
    return f"{user_models_prefix(user_id)}{model_uuid}.safetensors"


def lora_bytes_max(plan: Plan) -> int:
    """The largest LoRA ``plan`` may upload; 0 when it may upload none."""
    return LORA_BYTES_MAX if plan.lora_training else 0


@dataclass(frozen=True)
class LoraFacts:
    """What the API found in the uploaded object: ``problem`` when it is no safetensors file
    (a pickle, a zip, a truncated or malformed header), else its digest and tensor names."""

    size_bytes: int
    sha256: str | None = None
    tensor_names: Sequence[str] = field(default_factory=tuple)
    problem: str | None = None


def lora_problem(family: ModelFamily, names: Sequence[str]) -> str | None:
    """Why tensors named ``names`` are not a LoRA of ``family``, or None when they are."""
    if not names:
        return "it holds no tensors"
    if len(names) > TENSORS_MAX:
        return f"it holds {len(names)} tensors; a LoRA has at most {TENSORS_MAX}"
    foreign = [n for n in names if "lora" not in n.lower() and not n.endswith(".alpha")]
    if foreign:
        shown = ", ".join(foreign[:NAMES_SHOWN])
        return f"{len(foreign)} tensors are not LoRA weights (no 'lora' in {shown}): not a LoRA"

    def marked(marks: tuple[str, ...]) -> bool:
        return any(mark in name for name in names for mark in marks)

    unet, sdxl = marked(_UNET_MARKS), marked(_SDXL_MARKS)
    flux = marked(_FLUX_MARKS) or any(name.startswith(_FLUX_PREFIXES) for name in names)
    fits = {
        ModelFamily.SD15: unet and not sdxl and not flux,
        ModelFamily.SDXL: unet and not flux,
        ModelFamily.FLUX: flux and not unet,
    }[family]
    if fits:
        return None
    found = "flux" if flux else "sdxl" if sdxl else "sd1.5" if unet else "no known"
    return f"its tensor names are those of a {found} LoRA, not of {family.value}"


class UserModel(VerifiedObject[LoraFacts]):
    TOPIC = "pinksea:UserModel"
    NOUN = "model"
    ACCEPTED = UserModelStatus.VERIFIED.value

    @staticmethod
    def create_id(user_id: str, request_key: str) -> UUID:
        return user_model_id(user_id, request_key)

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Requested.
        TOPIC = "pinksea:UserModel.Created"

    class Requested(Aggregate.Created):
        TOPIC = "pinksea:UserModel.Requested"
        user_id: str
        request_key: str  # the Idempotency-Key, or a random one: the id derives from it
        key: str
        name: str  # sealed (NAME_FIELD) under the user's data key; plaintext before sealing
        family: str
        size_bytes_max: int

    class Rejected(VerifiedObject.Rejected):
        TOPIC = "pinksea:UserModel.Rejected"

    class Deleted(VerifiedObject.Deleted):
        TOPIC = "pinksea:UserModel.Deleted"

    class Verified(Aggregate.Event):
        TOPIC = "pinksea:UserModel.Verified"
        sha256: str
        size_bytes: int
        tensors: int

    @event(Requested)
    def __init__(
        self,
        user_id: str,
        request_key: str,
        key: str,
        name: str,
        family: str,
        size_bytes_max: int,
        timestamp: datetime,
    ) -> None:
        self._requested(user_id, request_key, key, size_bytes_max, timestamp)
        self.name = name
        self.family = family
        self.sha256: str | None = None
        self.size_bytes = 0
        self.tensors = 0

    @classmethod
    def request(
        cls,
        *,
        user_id: str,
        request_key: str,
        name: str,
        family: ModelFamily,
        plan: Plan,
        at: datetime,
        data_key: DataKey | None = None,
    ) -> UserModel:
        """``data_key``: the user's; the event records the name sealed with it (the API always
        passes it)."""
        require_aware(at)
        size_bytes_max = lora_bytes_max(plan)
        if size_bytes_max == 0:
            raise InvalidTransition(f"the {plan.slug} plan does not allow LoRAs")
        if not name.strip() or len(name) > NAME_CHARS_MAX:
            raise InvalidTransition(f"a LoRA's name is 1 to {NAME_CHARS_MAX} characters")
        return cls(
            user_id=user_id,
            request_key=request_key,
            key=user_model_key(user_id, user_model_id(user_id, request_key)),
            name=name if data_key is None else data_key.seal(NAME_FIELD, name),
            family=family.value,
            size_bytes_max=size_bytes_max,
            timestamp=at,
        )

    # ----------------------------------------------------------------------------- queries

    def ensure_same_request(
        self, name: str, family: ModelFamily, data_key: DataKey | None = None
    ) -> None:
        """A sealed name is compared opened (``data_key``: the user's)."""
        recorded = self.name
        if is_sealed(recorded):
            assert data_key is not None, "a sealed name is compared with the user's key"
            recorded = data_key.open(NAME_FIELD, recorded)
        if (name, family.value) != (recorded, self.family):
            raise IdempotencyConflict(
                "this Idempotency-Key was used for another model upload; use a new key"
            )

    def refusal(self, facts: LoraFacts) -> str | None:
        """Every tensor a LoRA weight, of the declared family."""
        return lora_problem(ModelFamily(self.family), facts.tensor_names)

    # ------------------------------------------------------------------ the accepted event

    def _accept(self, facts: LoraFacts, at: datetime) -> None:
        assert facts.sha256 is not None and len(facts.sha256) == SHA256_HEX_CHARS
        self._verified(
            sha256=facts.sha256,
            size_bytes=facts.size_bytes,
            tensors=len(facts.tensor_names),
            timestamp=at,
        )

    @event(Verified)
    def _verified(self, sha256: str, size_bytes: int, tensors: int, timestamp: datetime) -> None:
        self.status = UserModelStatus.VERIFIED.value
        self.sha256 = sha256
        self.size_bytes = size_bytes
        self.tensors = tensors

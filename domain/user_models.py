"""UserModel: a LoRA a user uploads to apply to a base model, from the presigned POST to its
verdict.

The flow is an upload's (domain/uploads.py): the API hands out a presigned POST
(``Requested``: the key ``models/users/{user_id}/{model_id}.safetensors`` and the most bytes
allowed), the client sends the file straight to S3, and completing it has the API read the
object back and describe it (``LoraFacts``: its sha256, its size, the tensor names in its
safetensors header, or why the header would not parse). The rules live here: safetensors
only (a pickle, whatever its name, never parses as one, and is never unpickled), within the
size limit, every tensor a LoRA weight, the names those of the declared base family. The
verdict is an event, ``Verified`` (the file's sha256 is recorded: a worker loads only those
exact bytes, and the model counts in the storage quota) or ``Rejected`` (the API deletes the
object); ``Deleted`` ends either. Another user's model is as unknown as a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.catalog import ModelFamily
from domain.errors import IdempotencyConflict, InvalidTransition, NotFound
from domain.ids import PINKSEA_NAMESPACE
from domain.plans import Plan
from domain.units import require_aware

# A LoRA of SD-1.5 is 10-150 MB, of SDXL up to about 800 MB; Flux's run larger still. One cap
# for every plan that allows LoRAs (``Plan.lora_training``): the presigned POST's
# content-length-range, checked again on completion.
LORA_BYTES_MAX = 1024**3
NAME_CHARS_MAX = 100
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
    PENDING = "pending"  # the presigned POST was handed out
    VERIFIED = "verified"
    REJECTED = "rejected"


def user_model_id(user_id: str, request_key: str) -> UUID:
    """The model's id from the user and the request's key: the same request again finds the
    same model."""
    return uuid5(PINKSEA_NAMESPACE, "\x1f".join(("user-model", user_id, request_key)))


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


class UserModel(Aggregate):
    TOPIC = "pinksea:UserModel"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Requested.
        TOPIC = "pinksea:UserModel.Created"

    class Requested(Aggregate.Created):
        TOPIC = "pinksea:UserModel.Requested"
        user_id: str
        request_key: str  # the Idempotency-Key, or a random one: the id derives from it
        key: str
        name: str
        family: str
        size_bytes_max: int

    class Verified(Aggregate.Event):
        TOPIC = "pinksea:UserModel.Verified"
        sha256: str
        size_bytes: int
        tensors: int

    class Rejected(Aggregate.Event):
        TOPIC = "pinksea:UserModel.Rejected"
        reason: str

    class Deleted(Aggregate.Event):
        TOPIC = "pinksea:UserModel.Deleted"
        key: str  # the object to remove (the API deletes it; a sweeper can find it here)

    @staticmethod
    def create_id(user_id: str, request_key: str) -> UUID:
        return user_model_id(user_id, request_key)

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
        self.user_id = user_id
        self.request_key = request_key
        self.key = key
        self.name = name
        self.family = family
        self.size_bytes_max = size_bytes_max
        self.requested_at = timestamp
        self.status = UserModelStatus.PENDING.value
        self.sha256: str | None = None
        self.size_bytes = 0
        self.tensors = 0
        self.rejection: str | None = None
        self.deleted = False

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
    ) -> UserModel:
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
            name=name,
            family=family.value,
            size_bytes_max=size_bytes_max,
            timestamp=at,
        )

    # ----------------------------------------------------------------------------- queries

    def ensure_owner(self, user_id: str) -> None:
        if user_id != self.user_id or self.deleted:
            raise NotFound(f"no model {self.id}")

    def ensure_same_request(self, name: str, family: ModelFamily) -> None:
        if (name, family.value) != (self.name, self.family):
            raise IdempotencyConflict(
                "this Idempotency-Key was used for another model upload; use a new key"
            )

    @property
    def usable(self) -> bool:
        """Whether a job may name it."""
        return self.status == UserModelStatus.VERIFIED.value and not self.deleted

    def verdict(self, facts: LoraFacts) -> str | None:
        """Why the object described by ``facts`` is refused, or None when it is accepted."""
        if facts.size_bytes > self.size_bytes_max:
            return f"the file has {facts.size_bytes} bytes; your plan allows {self.size_bytes_max}"
        if facts.problem is not None:
            return facts.problem
        return lora_problem(ModelFamily(self.family), facts.tensor_names)

    # ---------------------------------------------------------------------------- commands

    def complete(self, facts: LoraFacts, at: datetime) -> bool:
        """Accept or reject the uploaded object; False when the verdict was recorded before."""
        require_aware(at)
        if self.deleted:
            raise NotFound(f"no model {self.id}")
        if self.status != UserModelStatus.PENDING.value:
            return False
        reason = self.verdict(facts)
        if reason is not None:
            self._rejected(reason=reason, timestamp=at)
            return True
        assert facts.sha256 is not None and len(facts.sha256) == SHA256_HEX_CHARS
        assert 0 < facts.size_bytes <= self.size_bytes_max
        self._verified(
            sha256=facts.sha256,
            size_bytes=facts.size_bytes,
            tensors=len(facts.tensor_names),
            timestamp=at,
        )
        return True

    def delete(self, at: datetime) -> bool:
        """False when it was deleted before (a repeat changes nothing)."""
        require_aware(at)
        if self.deleted:
            return False
        self._deleted(key=self.key, timestamp=at)
        return True

    # ------------------------------------------------------------- event bodies (mutate only)

    @event(Verified)
    def _verified(self, sha256: str, size_bytes: int, tensors: int, timestamp: datetime) -> None:
        self.status = UserModelStatus.VERIFIED.value
        self.sha256 = sha256
        self.size_bytes = size_bytes
        self.tensors = tensors

    @event(Rejected)
    def _rejected(self, reason: str, timestamp: datetime) -> None:
        self.status = UserModelStatus.REJECTED.value
        self.rejection = reason

    @event(Deleted)
    def _deleted(self, key: str, timestamp: datetime) -> None:
        self.deleted = True

"""The parameters of a generation job (text-to-image, image-to-image, inpainting, upscaling):
one definition for every layer.

The API takes them as its request body, the domain checks them against the catalog and records
them in ``GenerationJob.Submitted``, the scheduler sends them to a GPU worker inside its
dispatch and the worker runs them. The field types and bounds below are the rules every caller
meets at construction (pydantic); :meth:`JobParameters.check` adds those that depend on the
model catalog. Pure data, no I/O: every layer may import it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from domain.catalog import MODELS, get_model
from domain.errors import InvalidParameters
from domain.personal_data import Sealer, blinded

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SchedulerName = Literal["ddim", "dpm++_2m", "euler", "euler_a", "lms", "pndm"]
SCHEDULERS = frozenset(get_args(SchedulerName))
# Text that ends up in events and read models: NUL cannot be stored in PostgreSQL text.
NO_NUL = r"^[^\x00]*$"

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# An input image a job names: one of the user's uploads (its id, a UUID) or one of the user's
# generated images (its name, ``<job id>-<index>``). Which user's is the dispatch's business:
# the API checks ownership at submission and the worker reads only under the job's user.
UPLOAD_REF = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
IMAGE_REF = UPLOAD_REF + r"-[0-9]{1,2}"
ImageRef = Annotated[
    str,
    Field(
        pattern=f"^({UPLOAD_REF}|{IMAGE_REF})$",
        examples=["3f2b8c1e-9d4a-4e2f-8a6b-1c2d3e4f5a6b"],
    ),
]
# Fields added after the first release: left out of the stored parameters when unset, so a
# text-to-image job's parameters (and its fingerprint, the idempotency check) stay as before.
_IMAGE_INPUT_FIELDS = ("init_image", "strength", "mask", "scale")
# A style preset's id (GET /v1/presets; domain/presets.py): recorded when the job named one,
# its templates already applied to prompt and negative_prompt (a later field, like the above).
STYLE_PRESET_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_PRESET_FIELDS = ("style_preset",)
# LoRAs (domain/user_models.py) a job applies: a later field too, absent unless it names some.
LORAS_MAX = 4
SHA256_HEX = r"^[0-9a-f]{64}$"
DEFAULT_STRENGTH = 0.8  # diffusers' default for image-to-image
# An upscale job's output (its width x height) is at most this many pixels (8 MP, 4096 x 2048):
# a larger one is refused before admission. Its input is the output / scale on each side.
UPSCALE_OUTPUT_PIXELS_MAX = 4096 * 2048


def is_upload_ref(ref: str) -> bool:
    """Whether ``ref`` names an upload (else one of the user's generated images)."""
    return re.fullmatch(UPLOAD_REF, ref) is not None


class LoraRef(BaseModel):
    """One of the user's verified LoRAs (GET /v1/models/mine) and the weight it is applied at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: UUID = Field(description="the model_id of one of your verified LoRAs")
    weight: float = Field(1.0, ge=-4, le=4, allow_inf_nan=False, examples=[0.8])
    sha256: str | None = Field(
        None,
        pattern=SHA256_HEX,
        description="the file's digest: set at submission from the verified upload (send it to "
        "pin that file; another digest is refused); the worker loads only these bytes",
    )


class JobParameters(BaseModel):
    """What a user asks for. ``seed`` None: one derived from the job id (``seed_for``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["tiny-sd"])
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL, examples=["a lighthouse"]
    )
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)
    steps: int = Field(ge=1, le=150, examples=[4])
    width: int = Field(ge=8, le=4096, examples=[64])
    height: int = Field(ge=8, le=4096, examples=[64])
    batch_size: int = Field(1, ge=1, le=8)
    seed: Seed | None = None
    guidance_scale: float = Field(7.5, ge=0, le=30, allow_inf_nan=False)
    scheduler: SchedulerName | None = None
    init_image: ImageRef | None = Field(
        None, description="image-to-image or inpainting: an upload id or one of your image names"
    )
    strength: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="how much of the init image is repainted (default 0.8, inpainting 1.0); "
        "the run takes int(steps x strength) steps",
    )
    mask: ImageRef | None = Field(
        None, description="inpainting: an upload id (white is repainted); needs init_image"
    )
    scale: Literal[2, 4] | None = Field(
        None,
        description="upscaling: the upscaler model's factor (2 or 4); width and height are the "
        "output's, the init image is read at width/scale x height/scale",
    )
    style_preset: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=STYLE_PRESET_ID,
        examples=["photography-general"],
        description="a style preset's id (GET /v1/presets): its templates are applied to prompt "
        "and negative_prompt at submission; the job records the expanded prompts and this id",
    )

    loras: tuple[LoraRef, ...] | None = Field(
        None,
        max_length=LORAS_MAX,
        description=f"up to {LORAS_MAX} of your LoRAs, each with its weight; a plan with "
        "lora_training only; each must be of the model's family",
    )

    @property
    def effective_strength(self) -> float:
        """The strength the pipeline runs with (1.0 for text-to-image: every step runs)."""
        if self.init_image is None:
            return 1.0
        if self.strength is not None:
            return self.strength
        return 1.0 if self.mask is not None else DEFAULT_STRENGTH

    @property
    def run_strength(self) -> float | None:
        """The strength as the job runs it, for reading its parameters back: the one sent, else
        its kind's default (image-to-image 0.8, inpainting 1.0); None where the job takes none
        (text-to-image, an upscale). The stored parameters keep what was sent."""
        if self.init_image is None or self.scale is not None:
            return None
        return self.effective_strength

    @property
    def effective_steps(self) -> int:
        """The denoising steps the run takes: diffusers' img2img and inpainting pipelines skip
        the first ``steps - int(steps x strength)`` (their ``get_timesteps``). An upscaler
        makes one pass (``check`` holds its jobs to ``steps`` 1)."""
        if self.scale is not None:
            return 1
        return min(int(self.steps * self.effective_strength), self.steps)

    def check(self) -> None:
        """Raise InvalidParameters with every problem the field rules cannot see (an unknown
        model, a blank prompt, a size the model cannot make), each saying what is allowed."""
        problems: list[str] = []
        spec = get_model(self.model)
        if spec is None:
            problems.append(f"model {self.model!r} is unknown; choose one of {', '.join(MODELS)}")
        if not self.prompt.strip():
            problems.append("prompt must not be empty")
        if spec is not None:
            r = spec.sizes
            for name, px in (("width", self.width), ("height", self.height)):
                if not r.min_px <= px <= r.max_px or px % r.multiple:
                    problems.append(
                        f"{name} must be a multiple of {r.multiple} between {r.min_px} and "
                        f"{r.max_px} for {self.model}"
                    )
        if spec is not None and spec.upscale:
            problems += self._upscale_problems(spec.upscale)
        else:
            if self.scale is not None:
                problems.append("scale needs an upscaler model (see GET /v1/models)")
            problems += self._input_problems(spec is not None and spec.inpainting)
        if self.loras:
            problems += self._lora_problems(spec is not None and spec.upscale > 0)
        if problems:
            raise InvalidParameters("; ".join(problems))

    def _input_problems(self, inpainting_model: bool) -> list[str]:
        problems: list[str] = []
        if self.init_image is None and (self.strength is not None or self.mask is not None):
            problems.append("strength and mask need an init_image")
        if self.mask is not None and not is_upload_ref(self.mask):
            problems.append("mask must be one of your uploads (an upload id)")
        if inpainting_model and (self.init_image is None or self.mask is None):
            problems.append(f"{self.model} is an inpainting model: send init_image and mask")
        if self.mask is not None and not inpainting_model:
            problems.append("a mask needs an inpainting model (see GET /v1/models)")
        if self.init_image is not None and self.effective_steps < 1:
            problems.append(
                f"int(steps x strength) = int({self.steps} x {self.effective_strength}) is 0: "
                "raise steps or strength"
            )
        return problems

    def _lora_problems(self, upscaler: bool) -> list[str]:
        assert self.loras is not None
        problems = []
        if upscaler:
            problems.append(f"{self.model} is an upscaler: it takes no LoRAs")
        ids = [lora.id for lora in self.loras]
        if len(set(ids)) != len(ids):
            problems.append("each LoRA may be named once")
        return problems

    def _upscale_problems(self, factor: int) -> list[str]:
        problems: list[str] = []
        if self.init_image is None:
            problems.append(f"{self.model} is an upscaler: send the init_image to upscale")
        if self.scale != factor:
            problems.append(f"{self.model} upscales x{factor}: send scale {factor}")
        if self.strength is not None or self.mask is not None:
            problems.append(f"{self.model} is an upscaler: it takes no strength or mask")
        if self.steps != 1:
            problems.append(f"{self.model} is an upscaler: it makes one pass, send steps 1")
        if self.batch_size != 1:
            problems.append(f"{self.model} is an upscaler: send batch_size 1")
        pixels = self.width * self.height
        if pixels > UPSCALE_OUTPUT_PIXELS_MAX:
            problems.append(
                f"the upscaled image would be {self.width} x {self.height} = {pixels} pixels; "
                f"at most {UPSCALE_OUTPUT_PIXELS_MAX} (upscale a smaller image)"
            )
        return problems

    def fingerprint(self, sealer: Sealer | None = None) -> str:
        """Digest of the parameters: one Idempotency-Key with other parameters is a conflict.
        With the user's ``sealer`` (a sealed job's): over the prompts' keyed digests, so it
        says nothing of them without the key (domain/personal_data.py)."""
        data = self.as_event_data()
        if sealer is not None:
            data = blinded(data, sealer)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def as_event_data(self) -> dict[str, Any]:
        """The fields as ``GenerationJob.Submitted`` records them (JSON types); the image
        inputs and the style preset only when set."""
        data = self.model_dump(mode="json")
        for name in (*_IMAGE_INPUT_FIELDS, *_PRESET_FIELDS):
            if data[name] is None:
                del data[name]
        if not data["loras"]:  # a later field: absent unless the job names LoRAs
            del data["loras"]
        return data


class RunParameters(JobParameters):
    """A job's parameters as a GPU worker runs them: the seed resolved (the requested one, or
    the one derived from the job id), so every attempt produces the same image."""

    seed: Seed

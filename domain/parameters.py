"""The parameters of a text-to-image job: one definition for every layer.

The API takes them as its request body, the domain checks them against the catalog and records
them in ``GenerationJob.Submitted``, the scheduler sends them to a GPU worker inside its
dispatch and the worker runs them. The field types and bounds below are the rules every caller
meets at construction (pydantic); :meth:`JobParameters.check` adds those that depend on the
model catalog. Pure data, no I/O: every layer may import it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from domain.catalog import MODELS, get_model
from domain.errors import InvalidParameters

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SchedulerName = Literal["ddim", "dpm++_2m", "euler", "euler_a", "lms", "pndm"]
SCHEDULERS = frozenset(get_args(SchedulerName))
# Text that ends up in events and read models: NUL cannot be stored in PostgreSQL text.
NO_NUL = r"^[^\x00]*$"

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


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
        if problems:
            raise InvalidParameters("; ".join(problems))

    def fingerprint(self) -> str:
        """Digest of the parameters: one Idempotency-Key with other parameters is a conflict."""
        canonical = json.dumps(self.as_event_data(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def as_event_data(self) -> dict[str, Any]:
        """The ten fields as ``GenerationJob.Submitted`` records them (JSON types)."""
        return self.model_dump(mode="json")


class RunParameters(JobParameters):
    """A job's parameters as a GPU worker runs them: the seed resolved (the requested one, or
    the one derived from the job id), so every attempt produces the same image."""

    seed: Seed

"""Run one dispatched job on a loaded pipeline: metered, seeded, stoppable within one step.

After every denoising step a callback publishes progress to Redis and, in the same round
trip, reads the job's cancel flag; it then checks the hold's time budget (metered time so far
>= ``budget_ms``) and the worker's abort signal. Any of them stops the run at once by raising
out of the callback. (diffusers' ``pipe._interrupt`` would skip the remaining steps but still
decode the latents with the VAE: time that would be billed to a cancelled job, or spent past
the budget, for an image nobody gets.)

Failures are classified here for the report: who is at fault (user: billed for the time
used; platform: never billed) and whether another attempt could succeed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
import redis
import structlog
import torch
from PIL import Image

from domain.parameters import SchedulerName
from gpu_consumer.inputs import InputMissing, RunInputs
from gpu_consumer.meter import GpuMeter
from gpu_consumer.model_cache import CacheFull
from gpu_consumer.outputs import STORAGE_UNAVAILABLE, UploadFailed, is_transient
from gpu_consumer.registry import LoadedPipeline, ModelError, ModelFamily, UnknownModel
from infra import redis_keys
from infra.messages import Dispatch, Outcome

log = structlog.get_logger("gpu_consumer.run")

# The schedulers a job may ask for -> diffusers scheduler classes.
SCHEDULERS: dict[SchedulerName, str] = {
    "ddim": "DDIMScheduler",
    "dpm++_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
# UNet families need sizes in multiples of the VAE's 8x downscale; Flux packs 2x2 latents.
SIZE_MULTIPLE = {ModelFamily.SD15: 8, ModelFamily.SDXL: 8, ModelFamily.FLUX: 16}


# ------------------------------------------------------------------------------ failures

Fault = Literal["platform", "user"]
Phase = Literal["load", "run", "upload"]


@dataclass(frozen=True)
class Failure:
    fault: Fault
    retryable: bool
    reason: str
    out_of_memory: bool = False


class InvalidJob(ValueError):
    """Parameters the pipeline cannot run (the API's validation should have caught them)."""


def classify(exc: BaseException, phase: Phase) -> Failure:
    """User errors are never retried; platform errors are, until the attempt cap (a job that
    fails every worker the same way ends in the dead-letter topic, its hold voided)."""
    reason = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, UnknownModel | InvalidJob | InputMissing):
        return Failure("user", False, reason)
    if isinstance(exc, UploadFailed) or (phase == "load" and is_transient(exc)):
        # The job's images (or its model) could not reach or leave S3: not the user's doing,
        # and a later attempt may find S3 back. A code first, for operators and the DLQ.
        detail = str(exc) if isinstance(exc, UploadFailed) else reason
        return Failure("platform", True, f"{STORAGE_UNAVAILABLE}: {detail}"[:500])
    if isinstance(exc, torch.OutOfMemoryError):
        return Failure("platform", True, f"out of memory: {exc}"[:500], out_of_memory=True)
    if phase != "run" or isinstance(exc, ModelError | CacheFull | OSError):
        # Loading and uploading use only the worker's own resources (disk, S3, memory).
        return Failure("platform", True, reason)
    if isinstance(exc, ValueError | TypeError) and not _is_device_error(exc):
        # Raised by the pipeline's own input checks: bad input that slipped through.
        return Failure("user", False, reason)
    return Failure("platform", True, reason)  # CUDA errors, crashes


def _is_device_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(word in text for word in ("CUDA", "cuDNN", "CUBLAS", "NCCL", "device-side"))


# ------------------------------------------------------------------------------ progress


class JobChannel(Protocol):
    """Where a running job reports progress and learns that it was cancelled."""

    def cancelled(self) -> bool: ...

    def step(self, step: int, total: int) -> bool:
        """Publish progress; returns whether the job was cancelled."""
        ...


class RedisJobChannel:
    """Progress on the job's pub/sub channel and last-progress key; the cancel flag read in
    the same round trip. Redis trouble never fails a job: progress is best effort, and the
    budget still bounds a run whose cancel flag cannot be read."""

    def __init__(self, client: redis.Redis, prefix: str, job_id: Any, attempt: int) -> None:
        self.client = client
        self.job_id = str(job_id)
        self.attempt = attempt
        self.channel = redis_keys.progress_channel(prefix, job_id)
        self.last_key = redis_keys.last_progress(prefix, job_id)
        self.cancel_key = redis_keys.cancel_flag(prefix, job_id)

    def cancelled(self) -> bool:
        try:
            return self.client.get(self.cancel_key) is not None
        except redis.RedisError as e:
            log.warning("cancel flag unreadable", job_id=self.job_id, error=str(e))
            return False

    def step(self, step: int, total: int) -> bool:
        message = json.dumps(
            {
                "job_id": self.job_id,
                "attempt": self.attempt,
                "step": step,
                "total_steps": total,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.publish(self.channel, message)
            pipe.set(self.last_key, message, ex=redis_keys.PROGRESS_TTL_S)
            pipe.get(self.cancel_key)
            *_, flag = pipe.execute()
        except redis.RedisError as e:
            log.warning("progress not published", job_id=self.job_id, error=str(e))
            return False
        return flag is not None


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    gpu_ms: int = 0
    cuda_ms: int | None = None
    images: list[Image.Image] = field(default_factory=list)
    steps_done: int = 0  # denoising steps run (the scheduler's, which can exceed the job's)
    failure: Failure | None = None


class _Stop(Exception):
    def __init__(self, outcome: Outcome, failure: Failure | None = None) -> None:
        self.outcome = outcome
        self.failure = failure


_ABORTED = Failure("platform", True, "the worker stopped during the run")


def validate(dispatch: Dispatch, family: ModelFamily) -> None:
    """What the parameters' own rules (checked as the dispatch is read) leave to the pipeline
    at hand: a prompt with some text, sizes its family can make."""
    params = dispatch.parameters
    problems = []
    if not params.prompt.strip():
        problems.append("empty prompt")
    multiple = SIZE_MULTIPLE[family]
    for name, px in (("width", params.width), ("height", params.height)):
        if px < multiple or px % multiple:
            problems.append(f"{name} {px} is not a positive multiple of {multiple}")
    if problems:
        raise InvalidJob("; ".join(problems))


def run_dispatch(
    model: LoadedPipeline,
    dispatch: Dispatch,
    device: torch.device,
    channel: JobChannel,
    abort: threading.Event | None = None,
    inputs: RunInputs | None = None,
) -> RunResult:
    """Run ``dispatch`` on ``model`` (already on ``device``), with its input images read
    already (``inputs``: image-to-image and inpainting). Never raises for a job-level problem:
    the result says what happened and what the run measured."""
    params = dispatch.parameters
    try:
        validate(dispatch, model.family)
        _set_scheduler(model, params.scheduler)
        pipeline, image_arguments = _pipeline_for(model, dispatch, inputs or RunInputs())
    except Exception as e:
        return RunResult(Outcome.FAILED, failure=classify(e, "run"))
    if channel.cancelled():
        return RunResult(Outcome.CANCELLED)  # cancelled while queued: nothing ran, nothing billed
    if dispatch.budget_ms <= 0:
        return RunResult(Outcome.BUDGET_EXHAUSTED)

    meter = GpuMeter(device)
    steps_done = 0
    total_steps = params.effective_steps

    def on_step_end(
        pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        nonlocal steps_done
        steps_done = index + 1
        # Progress in the job's own steps: some schedulers take more denoising steps than
        # asked (PNDM one more, Heun about twice as many); img2img skips the first ones.
        progress = round(steps_done * total_steps / pipe.num_timesteps)
        if channel.step(progress, total_steps):
            raise _Stop(Outcome.CANCELLED)
        if meter.elapsed_ms() >= dispatch.budget_ms:
            raise _Stop(Outcome.BUDGET_EXHAUSTED)
        if abort is not None and abort.is_set():
            raise _Stop(Outcome.FAILED, _ABORTED)
        return tensors

    # A CPU generator draws the same starting noise on every device: same seed, same image
    # on the same hardware, and only precision-level differences across GPUs.
    generator = torch.Generator("cpu").manual_seed(params.seed)
    arguments: dict[str, Any] = {
        "prompt": params.prompt,
        "num_inference_steps": params.steps,
        "width": params.width,
        "height": params.height,
        "num_images_per_prompt": params.batch_size,
        "guidance_scale": params.guidance_scale,
        "generator": generator,
        "output_type": "np",  # PIL conversion happens after the meter stops
        "callback_on_step_end": on_step_end,
    }
    if params.negative_prompt:
        arguments["negative_prompt"] = params.negative_prompt
    arguments.update(image_arguments)
    if "image" in image_arguments and not model.inpainting:
        # Image-to-image makes the init image's size (resized to the job's before the run).
        del arguments["width"], arguments["height"]

    outcome, failure, frames = Outcome.COMPLETED, None, None
    try:
        with meter, torch.inference_mode():
            frames = pipeline(**arguments).images
    except _Stop as stop:
        outcome, failure = stop.outcome, stop.failure
    except Exception as e:
        outcome, failure = Outcome.FAILED, classify(e, "run")
    measured = meter.measurement
    assert measured is not None  # the meter's __exit__ always measures
    images = to_pil(frames) if frames is not None else []
    return RunResult(outcome, measured.gpu_ms, measured.cuda_ms, images, steps_done, failure)


def _pipeline_for(
    model: LoadedPipeline, dispatch: Dispatch, inputs: RunInputs
) -> tuple[Any, dict[str, Any]]:
    """The pipeline that runs the job, and its image arguments. Text-to-image and inpainting
    run the loaded pipeline; image-to-image runs diffusers' img2img pipeline made from the
    loaded one's own modules (``from_pipe``: nothing is copied), after the scheduler is set."""
    params = dispatch.parameters
    if params.init_image is None:
        if model.inpainting:
            raise InvalidJob(f"{params.model} is an inpainting model: it needs an image and a mask")
        return model.pipeline, {}
    if inputs.image is None:
        raise InvalidJob("the job's init image was not read")
    arguments: dict[str, Any] = {"image": inputs.image, "strength": params.effective_strength}
    if model.inpainting:
        if inputs.mask is None:
            raise InvalidJob(f"{params.model} is an inpainting model: it needs a mask")
        return model.pipeline, arguments | {"mask_image": inputs.mask}
    if inputs.mask is not None:
        raise InvalidJob(f"{params.model} is not an inpainting model: a mask needs one")
    from diffusers import AutoPipelineForImage2Image

    pipeline = AutoPipelineForImage2Image.from_pipe(model.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, arguments


def _set_scheduler(model: LoadedPipeline, name: SchedulerName | None) -> None:
    """A fresh scheduler per run (schedulers keep per-run state), built from the model's own
    scheduler settings. Flux runs its flow-matching scheduler whatever the job asked for."""
    if model.family is ModelFamily.FLUX:
        return
    import diffusers

    pipeline = model.pipeline
    cls: Any = getattr(diffusers, SCHEDULERS[name]) if name else model.scheduler_class
    if cls is not None:
        pipeline.scheduler = cls.from_config(model.scheduler_config)


def to_pil(frames: np.ndarray) -> list[Image.Image]:
    # Random-weight models can produce NaNs; they become black pixels, not warnings.
    pixels = np.nan_to_num(np.clip(frames, 0.0, 1.0), nan=0.0)
    return [Image.fromarray(frame) for frame in (pixels * 255).round().astype(np.uint8)]

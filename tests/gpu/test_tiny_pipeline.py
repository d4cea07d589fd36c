"""The tiny pipeline through the registry, the meter, and a run's stops (no services)."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from domain.parameters import SCHEDULERS as SCHEDULER_NAMES
from domain.parameters import SchedulerName
from gpu_consumer.meter import GpuMeter
from gpu_consumer.registry import (
    LoadedPipeline,
    ModelFamily,
    ModelRegistry,
    ModelUnavailable,
    UnknownModel,
    estimate_pipeline_bytes,
)
from gpu_consumer.run import SCHEDULERS, InvalidJob, classify, run_dispatch
from gpu_consumer.tiny_model import MARKER, build_tiny_sd
from infra.messages import Outcome
from tests.gpu.conftest import make_dispatch

CPU = torch.device("cpu")


@dataclass
class FakeChannel:
    """Progress in a list; cancelled from a chosen step on."""

    cancel_at_step: int | None = None
    steps: list[tuple[int, int]] = field(default_factory=list)

    def cancelled(self) -> bool:
        return self.cancel_at_step == 0

    def step(self, step: int, total: int) -> bool:
        self.steps.append((step, total))
        return self.cancel_at_step is not None and step >= self.cancel_at_step


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_tiny_model_builds_once_and_loads_like_a_real_model(
    registry: ModelRegistry, tiny: LoadedPipeline, models_cache: Path
) -> None:
    folder = registry.resolve("tiny-sd")
    assert folder == models_cache / "tiny-sd"
    assert (folder / MARKER).is_file() and (folder / "model_index.json").is_file()
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    built_at = (folder / MARKER).stat().st_mtime_ns
    assert build_tiny_sd(folder) == folder  # idempotent: not rebuilt
    assert (folder / MARKER).stat().st_mtime_ns == built_at
    assert type(tiny.pipeline).__name__ == "StableDiffusionPipeline"
    assert tiny.family is ModelFamily.SD15
    assert tiny.pipeline.vae_scale_factor == 8  # the same valid sizes as SD-1.5


def test_weights_are_deterministic(tmp_path: Path, registry: ModelRegistry) -> None:
    again = build_tiny_sd(tmp_path / "tiny-sd")
    original = registry.resolve("tiny-sd")
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / part).read_bytes() == (original / part).read_bytes()


def test_a_run_produces_images_and_meters_cpu_time(tiny: LoadedPipeline) -> None:
    channel = FakeChannel()
    result = run_dispatch(tiny, make_dispatch(batch_size=2), CPU, channel)
    assert result.outcome is Outcome.COMPLETED and result.failure is None
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert isinstance(result.gpu_ms, int) and result.gpu_ms > 0
    assert result.cuda_ms is None  # CUDA events exist only on CUDA
    assert result.steps_done == 5  # PNDM, the model's own scheduler, takes one step more
    assert type(tiny.pipeline.scheduler).__name__ == "PNDMScheduler"
    assert channel.steps[-1] == (4, 4)  # progress counts the job's own steps
    assert [s for s, _ in channel.steps] == sorted(s for s, _ in channel.steps)


def test_same_seed_same_image_bytes(tiny: LoadedPipeline) -> None:
    first = run_dispatch(tiny, make_dispatch(seed=7), CPU, FakeChannel())
    second = run_dispatch(tiny, make_dispatch(seed=7), CPU, FakeChannel())
    other = run_dispatch(tiny, make_dispatch(seed=8), CPU, FakeChannel())
    assert png(first.images[0]) == png(second.images[0])
    assert png(first.images[0]) != png(other.images[0])


@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) - {"lms"}))  # lms needs scipy
def test_every_scheduler_runs_and_is_deterministic(
    tiny: LoadedPipeline, name: SchedulerName
) -> None:
    runs = [run_dispatch(tiny, make_dispatch(scheduler=name), CPU, FakeChannel()) for _ in "ab"]
    assert runs[0].outcome is Outcome.COMPLETED, runs[0].failure
    assert type(tiny.pipeline.scheduler).__name__ == SCHEDULERS[name]
    assert png(runs[0].images[0]) == png(runs[1].images[0])


def test_a_job_without_a_scheduler_gets_the_models_own(tiny: LoadedPipeline) -> None:
    before = run_dispatch(tiny, make_dispatch(), CPU, FakeChannel())
    run_dispatch(tiny, make_dispatch(scheduler="euler_a"), CPU, FakeChannel())
    after = run_dispatch(tiny, make_dispatch(), CPU, FakeChannel())
    assert type(tiny.pipeline.scheduler).__name__ == "PNDMScheduler"
    assert png(before.images[0]) == png(after.images[0])


def test_cancel_stops_within_one_step(tiny: LoadedPipeline) -> None:
    full = run_dispatch(tiny, make_dispatch(steps=20), CPU, FakeChannel())
    channel = FakeChannel(cancel_at_step=2)
    cancelled = run_dispatch(tiny, make_dispatch(steps=20, scheduler="ddim"), CPU, channel)
    assert cancelled.outcome is Outcome.CANCELLED
    assert cancelled.steps_done == 2 and len(channel.steps) == 2  # not one step more
    assert cancelled.images == []  # stopped before the VAE decode
    assert 0 < cancelled.gpu_ms < full.gpu_ms


def test_cancelled_before_start_runs_nothing(tiny: LoadedPipeline) -> None:
    result = run_dispatch(tiny, make_dispatch(), CPU, FakeChannel(cancel_at_step=0))
    assert result.outcome is Outcome.CANCELLED and result.gpu_ms == 0 and result.steps_done == 0


def test_budget_exhaustion_stops_the_run(tiny: LoadedPipeline) -> None:
    full = run_dispatch(tiny, make_dispatch(steps=20), CPU, FakeChannel())
    budget_ms = max(1, full.gpu_ms // 4)
    result = run_dispatch(tiny, make_dispatch(steps=20, budget_ms=budget_ms), CPU, FakeChannel())
    assert result.outcome is Outcome.BUDGET_EXHAUSTED
    assert result.gpu_ms >= budget_ms  # stopped at the first step end past the budget
    assert result.steps_done < 20 and result.images == []


def test_abort_is_a_retryable_platform_failure(tiny: LoadedPipeline) -> None:
    abort = threading.Event()
    abort.set()
    result = run_dispatch(tiny, make_dispatch(), CPU, FakeChannel(), abort)
    assert result.outcome is Outcome.FAILED and result.steps_done == 1
    assert result.failure is not None and result.failure.fault == "platform"
    assert result.failure.retryable


@pytest.mark.parametrize("overrides", [{"width": 60}, {"height": 36}, {"prompt": "  "}])
def test_invalid_parameters_are_user_errors(tiny: LoadedPipeline, overrides: dict) -> None:
    result = run_dispatch(tiny, make_dispatch(**overrides), CPU, FakeChannel())
    assert result.outcome is Outcome.FAILED and result.gpu_ms == 0
    assert result.failure is not None
    assert (result.failure.fault, result.failure.retryable) == ("user", False)


@pytest.mark.parametrize(
    "overrides", [{"height": 0}, {"scheduler": "karras"}, {"steps": 0}, {"seed": -1}]
)
def test_parameters_out_of_their_rules_make_no_dispatch(overrides: dict) -> None:
    # The rules of domain/parameters.py hold for every dispatch: a worker never sees these.
    with pytest.raises(ValidationError):
        make_dispatch(**overrides)


def test_every_scheduler_a_job_may_ask_for_has_its_diffusers_class() -> None:
    assert set(SCHEDULERS) == SCHEDULER_NAMES


def test_failure_classification() -> None:
    oom = classify(torch.OutOfMemoryError("CUDA out of memory"), "run")
    assert (oom.fault, oom.retryable, oom.out_of_memory) == ("platform", True, True)
    cuda = classify(RuntimeError("CUDA error: an illegal memory access"), "run")
    assert (cuda.fault, cuda.retryable) == ("platform", True)
    crash = classify(KeyError("unet"), "run")
    assert (crash.fault, crash.retryable) == ("platform", True)
    bad_input = classify(ValueError("`height` and `width` have to be divisible by 8"), "run")
    assert (bad_input.fault, bad_input.retryable) == ("user", False)
    assert classify(InvalidJob("no"), "run").fault == "user"
    assert classify(UnknownModel("nope"), "load").fault == "user"
    assert classify(ModelUnavailable("gone"), "load").fault == "platform"
    assert classify(ValueError("bad manifest"), "load").fault == "platform"
    assert classify(ConnectionError("S3 down"), "upload").retryable


def test_meter_floors_elapsed_time_to_whole_ms() -> None:
    with GpuMeter("cpu") as meter:
        time.sleep(0.0123)
    measured = meter.measurement
    assert measured is not None
    assert measured.gpu_ms == measured.elapsed_ns // 1_000_000 >= 12
    assert isinstance(measured.gpu_ms, int) and measured.cuda_ms is None


def test_size_estimate_from_headers_matches_loaded_parameters(
    registry: ModelRegistry, tiny: LoadedPipeline
) -> None:
    from gpu_consumer.model_cache import pipeline_bytes

    folder = registry.resolve("tiny-sd")
    loaded = pipeline_bytes(tiny.pipeline)
    estimate = estimate_pipeline_bytes(folder, torch.float32)
    # The headers list the saved weights; a loaded model adds a few unsaved buffers.
    assert loaded * 0.99 <= estimate <= loaded
    assert estimate_pipeline_bytes(folder, torch.float16) * 2 == estimate


def test_unknown_and_missing_models(tmp_path: Path) -> None:
    registry = ModelRegistry(models_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(UnknownModel):
        registry.resolve("no-such-model")
    with pytest.raises(ModelUnavailable):
        registry.resolve("sd-1.5")  # known, but neither in the model folder nor in S3


def test_models_dir_folder_is_used_as_is(tmp_path: Path, registry: ModelRegistry) -> None:
    build_tiny_sd(tmp_path / "sd-1.5")  # stands in for real weights on the shared folder
    shared = ModelRegistry(models_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert shared.resolve("sd-1.5") == tmp_path / "sd-1.5"
    loaded = shared.load("sd-1.5", CPU)
    result = run_dispatch(loaded, make_dispatch(model="sd-1.5"), CPU, FakeChannel())
    assert result.outcome is Outcome.COMPLETED


def test_sd15_sized_configs_have_sd15_shapes(tmp_path: Path) -> None:
    """Checked on the meta device: shapes without memory or weights."""
    from gpu_consumer.tiny_model import _sd15_components, write_byte_level_vocab

    with torch.device("meta"):
        parts = _sd15_components(write_byte_level_vocab(tmp_path))
    millions = {k: sum(p.numel() for p in m.parameters()) // 10**6 for k, m in parts.items()}
    assert millions == {"text_encoder": 123, "unet": 859, "vae": 83}

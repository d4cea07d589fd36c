"""Full-size architectures from their published configs (gpu_consumer.full_models): their
parameter counts against the published ones, and SD-1.5 at full size through the registry and
the worker's metered run on the CPU (a small image, two steps: every full-size code path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.calibrate import DEFAULT_MODELS_DIR
from gpu_consumer import full_models
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.run import run_dispatch
from gpu_consumer.tiny_model import BUILD_VERSION, MARKER
from infra.messages import Outcome
from tests.gpu.conftest import make_dispatch
from tests.gpu.test_tiny_pipeline import FakeChannel

CPU = torch.device("cpu")

# Published parameter counts (diffusers / transformers model cards and configs).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
    "flux": {
        "transformer": 11_901_408_320,
        "vae": 83_819_683,
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
    },
}


@pytest.mark.parametrize("family", full_models.FAMILIES)
def test_configs_have_the_published_parameter_counts(family: str) -> None:
    """Built on the meta device: shapes without memory, so even Flux takes seconds."""
    counts = full_models.parameter_counts(family)
    assert counts == PUBLISHED[family]
    denoiser = counts.get("unet") or counts["transformer"]
    assert denoiser // 10**6 == full_models.PUBLISHED_DENOISER_M[family]


@pytest.fixture(scope="module")
def sd15_dir() -> Path:
    """Built once per machine (about 20 s, 2 GB in fp16); a build of another version or a
    broken one is replaced."""
    return full_models.build("sd15", DEFAULT_MODELS_DIR / "sd-1.5", torch.float16)


def test_sd15_full_size_runs_through_the_registry_and_the_meter(sd15_dir: Path) -> None:
    registry = ModelRegistry(models_dir=sd15_dir.parent, cache_dir=sd15_dir.parent / "cache")
    assert registry.resolve("sd-1.5") == sd15_dir
    loaded = registry.load("sd-1.5", CPU)
    pipe = loaded.pipeline
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.config.block_out_channels == [320, 640, 1280, 1280]
    assert pipe.unet.config.cross_attention_dim == 768
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == 77
    assert next(pipe.unet.parameters()).dtype == torch.float32  # fp16 on disk, fp32 on a CPU
    channel = FakeChannel()
    result = run_dispatch(
        loaded, make_dispatch(model="sd-1.5", steps=2, width=64, height=64), CPU, channel
    )
    assert result.outcome is Outcome.COMPLETED, result.failure
    assert result.gpu_ms > 0 and result.steps_done >= 2
    assert [im.size for im in result.images] == [(64, 64)]
    assert channel.steps[-1] == (2, 2)


def test_a_build_is_reused_and_a_foreign_folder_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "sd-1.5"
    target.mkdir()
    (target / "stale.txt").write_text("not a model")
    assert not full_models.is_built(target, "sd15", torch.float16)
    # The marker decides; a build in another dtype is another build.
    (target / MARKER).write_text('{"kind": "sd15-full", "version": 1, "dtype": "x"}')
    assert not full_models.is_built(target, "sd15", torch.float16)
    marker = full_models.marker("sd15", torch.float16)
    assert marker == {"kind": "sd15-full", "version": BUILD_VERSION, "dtype": "float16"}

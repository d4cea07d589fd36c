"""Fixtures of the GPU-worker tests: the tiny model, built once per session, and dispatches.
The local stack comes from tests/conftest.py (``settings``, ``redis_sync``, ``s3_client``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from domain.parameters import RunParameters
from gpu_consumer.registry import LoadedPipeline, ModelRegistry
from infra.messages import Dispatch


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread() -> None:
    # The tiny model's operations are too small to split: extra threads only contend.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def registry(models_cache: Path) -> ModelRegistry:
    return ModelRegistry(models_dir=None, cache_dir=models_cache)


@pytest.fixture(scope="session")
def tiny(registry: ModelRegistry) -> LoadedPipeline:
    return registry.load("tiny-sd", torch.device("cpu"))


def make_dispatch(**overrides: Any) -> Dispatch:
    """A dispatch of the tiny model; ``overrides`` name its fields or its job parameters."""
    names = RunParameters.model_fields.keys()
    parameters: dict[str, Any] = {
        "model": "tiny-sd",
        "prompt": "a lighthouse at dusk",
        "steps": 4,
        "width": 64,
        "height": 64,
        "seed": 42,
    }
    parameters.update({k: v for k, v in overrides.items() if k in names})
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "attempt": 1,
        "worker_id": "w-test",
        "user_id": "user-1",
        "tier": "basic",
        "budget_ms": 60_000,
        "dispatched_at": datetime.now(UTC),
    }
    fields.update({k: v for k, v in overrides.items() if k not in names})
    return Dispatch(parameters=RunParameters(**parameters), **fields)

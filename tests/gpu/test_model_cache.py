"""The model cache: byte budgets, LRU order, pinning, the host tier (no services)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from gpu_consumer.model_cache import CacheFull, ModelCache, pipeline_bytes
from gpu_consumer.registry import LoadedPipeline, ModelFamily, ModelRegistry

MB = 2**20


class FakePipeline:
    """A pipeline of one module with ``mb`` MiB of float32 weights; remembers its moves."""

    def __init__(self, mb: int) -> None:
        self.components = {"unet": torch.nn.Linear(mb * MB // 4, 1, bias=False)}
        self.moves: list[str] = []

    def to(self, device: Any) -> FakePipeline:
        self.moves.append(str(device))  # a real move would need the device
        return self


@dataclass
class FakeSource:
    sizes_mb: dict[str, int]
    loads: list[str] = field(default_factory=list)

    def estimate_bytes(self, key: str, device: torch.device) -> int:
        return self.sizes_mb[key] * MB

    def load(self, key: str, device: torch.device) -> LoadedPipeline:
        self.loads.append(key)
        return LoadedPipeline(key, ModelFamily.SD15, FakePipeline(self.sizes_mb[key]))


def cpu_cache(source: FakeSource, budget_mb: int) -> ModelCache:
    return ModelCache(source, "cpu", device_budget_bytes=0, host_budget_bytes=budget_mb * MB)


def test_hits_do_not_reload_and_report_no_load_time() -> None:
    source = FakeSource({"a": 1})
    cache = cpu_cache(source, 10)
    with cache.use("a") as first:
        assert first.load_ms >= 0
    with cache.use("a") as second:
        assert second.load_ms == 0 and second.pipeline is first.pipeline
    assert source.loads == ["a"]


def test_least_recently_used_is_evicted_to_stay_within_budget() -> None:
    source = FakeSource({"a": 4, "b": 4, "c": 4})
    cache = cpu_cache(source, 10)
    for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        with cache.use(key):
            pass
    assert cache.loaded() == ["a", "c"]
    assert cache.used_bytes()[0] <= 10 * MB
    with cache.use("b"):
        pass
    assert source.loads == ["a", "b", "c", "b"]
    assert cache.loaded() == ["c", "b"]


def test_a_model_in_use_is_never_evicted() -> None:
    source = FakeSource({"a": 6, "b": 6})
    cache = cpu_cache(source, 10)
    with cache.use("a"):
        with pytest.raises(CacheFull, match="in use: a"):
            cache.acquire("b")
        assert cache.loaded() == ["a"]
    with cache.use("b"):  # once released, "a" makes room
        assert cache.loaded() == ["b"]


def test_a_model_larger_than_the_budget_is_refused_before_loading() -> None:
    source = FakeSource({"huge": 11})
    with pytest.raises(CacheFull):
        cpu_cache(source, 10).acquire("huge")
    assert source.loads == []


def test_gpu_evictions_park_in_host_memory_within_its_budget() -> None:
    source = FakeSource({"a": 4, "b": 4, "c": 4})
    cache = ModelCache(
        source, torch.device("cuda"), device_budget_bytes=5 * MB, host_budget_bytes=8 * MB
    )
    with cache.use("a") as a:
        assert a.pipeline.moves == ["cuda"]
    with cache.use("b"):
        pass
    assert cache.loaded() == ["b"] and cache.parked() == ["a"]
    assert a.pipeline.moves == ["cuda", "cpu"]
    with cache.use("a") as again:  # back from host memory, not from disk
        assert again.pipeline is a.pipeline and a.pipeline.moves[-1] == "cuda"
    assert source.loads == ["a", "b"]
    assert cache.parked() == ["b"]
    with cache.use("c"):
        pass
    # "a" parked; "b" dropped to make room for "c" on its way through host memory.
    assert cache.parked() == ["a"]
    assert cache.used_bytes() == (4 * MB, 4 * MB)


def test_evict_idle_keeps_pinned_models() -> None:
    source = FakeSource({"a": 1, "b": 1})
    cache = cpu_cache(source, 10)
    with cache.use("a"):
        pass
    with cache.use("b"):
        assert cache.evict_idle() == ["a"]
        assert cache.loaded() == ["b"]


def test_concurrent_acquires_load_once() -> None:
    source = FakeSource({"a": 1})
    cache = cpu_cache(source, 10)
    leases = []

    def use() -> None:
        leases.append(cache.acquire("a"))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert source.loads == ["a"] and len(leases) == 8


def test_the_real_tiny_pipeline_is_sized_and_cached(registry: ModelRegistry) -> None:
    cache = ModelCache(registry, "cpu", device_budget_bytes=0, host_budget_bytes=64 * MB)
    with cache.use("tiny-sd") as lease:
        assert lease.model.family is ModelFamily.SD15
        size = pipeline_bytes(lease.pipeline)
    assert cache.used_bytes() == (size, 0)
    assert cache.loaded() == ["tiny-sd"]

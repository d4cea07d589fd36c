"""Loaded pipelines, kept for the next job that wants the same model.

Two LRU tiers, each bounded by a byte budget: pipelines on the GPU (ready to run), and idle
pipelines parked in host memory (a host-to-GPU copy away, much cheaper than a load from disk).
A GPU pipeline pushed out by a newer one moves to the host tier if it fits there, else it is
dropped. On a CPU worker there is one tier: the pipelines in host memory.

A model in use is pinned and never evicted: a load that would need its room fails instead
(a platform error; the job is retried on another worker). Sizes come from the weights'
headers before a load and from the loaded parameters after it. The time to make a model
ready (download, load, host-to-GPU copy) is reported as ``load_ms``: it is never billed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gpu_consumer.registry import LoadedPipeline


class PipelineSource(Protocol):
    def estimate_bytes(self, key: str, device: torch.device) -> int: ...

    def load(self, key: str, device: torch.device) -> LoadedPipeline:
        """Load into host memory, in the dtype ``device`` runs it in."""
        ...


class CacheFull(Exception):
    """The model does not fit beside the pinned ones (or at all)."""


@dataclass
class _Entry:
    model: LoadedPipeline
    nbytes: int
    pins: int = 0


@dataclass(frozen=True)
class Lease:
    model: LoadedPipeline
    load_ms: int  # 0 when the pipeline was already on the device

    @property
    def pipeline(self) -> Any:
        return self.model.pipeline


class ModelCache:
    def __init__(
        self,
        source: PipelineSource,
        device: torch.device | str,
        *,
        device_budget_bytes: int,
        host_budget_bytes: int,
    ) -> None:
        self.source = source
        self.device = torch.device(device)
        self.on_gpu = self.device.type != "cpu"
        self.device_budget = device_budget_bytes if self.on_gpu else host_budget_bytes
        self.host_budget = host_budget_bytes if self.on_gpu else 0
        self._ready: OrderedDict[str, _Entry] = OrderedDict()  # on self.device, LRU first
        self._parked: OrderedDict[str, _Entry] = OrderedDict()  # idle in host memory (GPU only)
        self._lock = threading.Lock()  # guards the two dicts; never held during a load
        self._loading = threading.Lock()  # one load at a time

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Lease]:
        """The pipeline of ``key`` on the device, pinned until the block exits."""
        lease = self.acquire(key)
        try:
            yield lease
        finally:
            self.release(key)

    def acquire(self, key: str) -> Lease:
        with self._lock:
            if (entry := self._hit(key)) is not None:
                return Lease(entry.model, 0)
        with self._loading:
            started = time.perf_counter_ns()
            with self._lock:  # loaded by another thread while this one waited
                if (entry := self._hit(key)) is not None:
                    return Lease(entry.model, 0)
                entry = self._parked.pop(key, None)
            if entry is None:
                entry = self._load(key)
            else:
                self._make_room(entry.nbytes, key)
                entry.model.pipeline.to(self.device)
            with self._lock:
                entry.pins = 1
                self._ready[key] = entry
            return Lease(entry.model, (time.perf_counter_ns() - started) // 1_000_000)

    def release(self, key: str) -> None:
        with self._lock:
            self._ready[key].pins -= 1

    def discard(self, key: str) -> None:
        """Drop an unpinned pipeline that must not run again as it is (one whose LoRAs could
        not be removed, gpu_consumer/loras.py): the next job of ``key`` loads it afresh."""
        with self._lock:
            entry = self._ready.get(key)
            if entry is not None and entry.pins == 0:
                del self._ready[key]
        _free_memory(self.device)

    def loaded(self) -> list[str]:
        """Keys ready on the device, most recently used last."""
        with self._lock:
            return list(self._ready)

    def parked(self) -> list[str]:
        with self._lock:
            return list(self._parked)

    def used_bytes(self) -> tuple[int, int]:
        """(bytes on the device, bytes parked in host memory)."""
        with self._lock:
            return (
                sum(e.nbytes for e in self._ready.values()),
                sum(e.nbytes for e in self._parked.values()),
            )

    def evict_idle(self) -> list[str]:
        """Drop every unpinned pipeline (after an out-of-memory error, for instance)."""
        with self._lock:
            idle = [k for k, e in self._ready.items() if e.pins == 0]
            for key in idle:
                del self._ready[key]
            idle += list(self._parked)
            self._parked.clear()
        _free_memory(self.device)
        return idle

    # -------------------------------------------------------------------------- internals

    def _hit(self, key: str) -> _Entry | None:
        entry = self._ready.get(key)
        if entry is not None:
            entry.pins += 1
            self._ready.move_to_end(key)
        return entry

    def _load(self, key: str) -> _Entry:
        estimate = self.source.estimate_bytes(key, self.device)
        self._make_room(estimate, key)
        if self.on_gpu:
            # The load passes through host memory: make room there too.
            self._evict_parked(self.host_budget - estimate)
        model = self.source.load(key, self.device)
        nbytes = pipeline_bytes(model.pipeline)
        self._make_room(nbytes, key)  # the estimate can be short (buffers, tied weights)
        model.pipeline.to(self.device)
        _warm_up(model)
        return _Entry(model, nbytes)

    def _make_room(self, nbytes: int, key: str) -> None:
        if nbytes > self.device_budget:
            budget = _mib(self.device_budget)
            raise CacheFull(f"{key} needs {_mib(nbytes)}; the {self.device} budget is {budget}")
        demoted: list[tuple[str, _Entry]] = []
        with self._lock:
            used = sum(e.nbytes for e in self._ready.values())
            for other, entry in list(self._ready.items()):  # least recently used first
                if used + nbytes <= self.device_budget:
                    break
                if entry.pins:
                    continue
                del self._ready[other]
                used -= entry.nbytes
                demoted.append((other, entry))
            if used + nbytes > self.device_budget:
                pinned = [k for k, e in self._ready.items() if e.pins]
                for other, entry in demoted:  # undo: nothing was moved yet
                    self._ready[other] = entry
                raise CacheFull(
                    f"{key} needs {_mib(nbytes)}; {_mib(used)} of the {self.device} budget "
                    f"({_mib(self.device_budget)}) is held by models in use: {', '.join(pinned)}"
                )
        for other, entry in demoted:
            self._park(other, entry)
        if demoted:
            _free_memory(self.device)

    def _park(self, key: str, entry: _Entry) -> None:
        """Keep an evicted GPU pipeline in host memory if it fits there, else drop it."""
        if not self.on_gpu or entry.nbytes > self.host_budget:
            return
        self._evict_parked(self.host_budget - entry.nbytes)
        entry.model.pipeline.to("cpu")
        with self._lock:
            self._parked[key] = entry

    def _evict_parked(self, keep_at_most: int) -> None:
        with self._lock:
            while self._parked and sum(e.nbytes for e in self._parked.values()) > keep_at_most:
                self._parked.popitem(last=False)


def pipeline_bytes(pipeline: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's torch modules, each counted once."""
    seen: set[int] = set()
    total = 0
    for component in getattr(pipeline, "components", {}).values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            pointer = tensor.data_ptr()
            if pointer not in seen:
                seen.add(pointer)
                total += tensor.numel() * tensor.element_size()
    return total


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def _warm_up(model: LoadedPipeline) -> None:
    """One tiny run right after loading: the first call of a fresh pipeline pays one-time
    costs (kernel selection, allocator growth, lazy initialisation). They belong to loading,
    which is never billed, not to the first user's job."""
    import torch

    if model.upscale:  # an upscaler takes one image, nothing else
        from PIL import Image

        try:
            with torch.inference_mode():
                model.pipeline(Image.new("RGB", (16, 16)))
        except Exception:
            logging.getLogger(__name__).warning("warm-up of %s failed", model.key, exc_info=True)
        return
    inputs: dict[str, Any] = {}
    if model.inpainting:  # an inpainting pipeline runs only on an image and its mask
        from PIL import Image

        inputs = {"image": Image.new("RGB", (64, 64)), "mask_image": Image.new("L", (64, 64), 255)}
    try:
        with torch.inference_mode():
            model.pipeline(
                prompt="warm-up",
                num_inference_steps=1,
                width=64,
                height=64,
                output_type="pil",
                **inputs,
            )
    except Exception:
        logging.getLogger(__name__).warning("warm-up of %s failed", model.key, exc_info=True)

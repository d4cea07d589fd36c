"""The GPU worker's device and job metrics (the worker's own counters stay in worker.py).

Device figures are read when ``/metrics`` is scraped, from NVML (the ``nvidia-ml-py``
package of the ``gpu`` extra), as DCGM or ``nvidia-smi`` would report them: the whole device,
other processes included (one worker per GPU in production).

- ``pinksea_gpu_utilization_ratio``: NVML's "percent of time a kernel ran" over its last
  sample period (1/6 s to 1 s), as 0 to 1. Only NVML knows it; without NVML there is no sample.
- ``pinksea_gpu_memory_used_bytes`` / ``_total_bytes``: NVML's memory info, or CUDA's
  ``cudaMemGetInfo`` (``torch.cuda.mem_get_info``) when NVML is missing.
- ``pinksea_gpu_worker_info``: 1 per running worker, with its tier, device and GPU name, so a
  panel can give the unlabelled worker metrics (``pinksea_gpu_worker_busy``) a tier with
  ``* on (instance, job) group_left (tier) pinksea_gpu_worker_info``.

On the CPU (the local stack, the tests) the GPU families are declared with no sample at all:
there is no GPU to measure, and the host's memory is already ``process_resident_memory_bytes``;
reporting it under a GPU name would make the panel lie.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger("gpu_worker.metrics")

JOB_SECONDS = Histogram(
    "pinksea_gpu_job_seconds",
    "Metered GPU time of one run (the figure billing uses), runs that metered any",
    ["tier", "model"],
    # From the tiny CPU model (~0.1 s) to the longest budgets (minutes).
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)


def observe_job(tier: str, model: str, gpu_ms: int) -> None:
    """One run's metered time; refusals and runs that never reached the GPU metered none."""
    if gpu_ms > 0:
        JOB_SECONDS.labels(tier, model).observe(gpu_ms / 1000)


@dataclass
class _Watched:
    tier: str
    worker: str
    device: torch.device
    gpu: str
    nvml: Any | None  # the NVML device handle, when NVML knows the device


class _Nvml:
    """NVML, initialised once per process on first use; None of it when it is unavailable
    (no driver, no package): the memory figures then come from CUDA."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any | None = None
        self._tried = False

    def module(self) -> Any | None:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._module = pynvml
                except Exception as e:  # reported once; the worker runs without it
                    log.warning("NVML unavailable: no GPU utilization metric", error=str(e))
            return self._module

    def handle(self, device: torch.device) -> Any | None:
        """The NVML handle of a CUDA device. CUDA and NVML number devices differently when
        CUDA_VISIBLE_DEVICES is set, so the device is found by its UUID, then through torch's
        own CUDA -> NVML index translation (what ``torch.cuda.utilization`` uses)."""
        nvml = self.module()
        if nvml is None:
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
        lookups: list[Any] = []
        if uuid:
            key = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            lookups.append(lambda: nvml.nvmlDeviceGetHandleByUUID(key))
        to_nvml = getattr(torch.cuda, "_get_nvml_device_index", None)
        if to_nvml is not None:
            lookups.append(lambda: nvml.nvmlDeviceGetHandleByIndex(to_nvml(index)))
        for lookup in lookups:
            try:
                return lookup()
            except Exception:  # e.g. a MIG instance's UUID: try the next way
                continue
        log.warning("NVML does not know this CUDA device", device=str(device))
        return None


class GpuCollector(Collector):
    """The devices of the workers running in this process (one in production)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._nvml = _Nvml()

    def watch(self, device: torch.device, tier: str, worker: str, gpu: str) -> None:
        handle = None
        if device.type == "cuda":
            try:
                handle = self._nvml.handle(device)
            except Exception as e:  # CUDA itself failing shows in the jobs, not here
                log.warning("GPU metrics: device lookup failed", error=str(e))
        with self._lock:
            self._watched[worker] = _Watched(tier, worker, device, gpu, handle)

    def unwatch(self, worker: str) -> None:
        with self._lock:
            self._watched.pop(worker, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["tier", "worker"]
        info = GaugeMetricFamily(
            "pinksea_gpu_worker_info",
            "1 per running GPU worker: its tier, device and GPU",
            labels=[*labels, "device", "gpu"],
        )
        utilization = GaugeMetricFamily(
            "pinksea_gpu_utilization_ratio",
            "Share of the last NVML sample period in which a kernel ran on the GPU (0-1)",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "pinksea_gpu_memory_used_bytes", "GPU memory in use, every process's", labels=labels
        )
        total = GaugeMetricFamily(
            "pinksea_gpu_memory_total_bytes", "GPU memory of the device", labels=labels
        )
        with self._lock:
            watched = list(self._watched.values())
        for w in watched:
            key = [w.tier, w.worker]
            info.add_metric([*key, str(w.device), w.gpu], 1)
            if w.device.type != "cuda":
                continue  # no GPU: nothing to report (see the module's docstring)
            try:
                figures = self._read(w)
            except Exception as e:  # a scrape must not fail because one reading did
                log.warning("GPU metrics: reading failed", worker=w.worker, error=str(e))
                continue
            ratio, memory_used, memory_total = figures
            if ratio is not None:
                utilization.add_metric(key, ratio)
            used.add_metric(key, memory_used)
            total.add_metric(key, memory_total)
        yield info
        yield utilization
        yield used
        yield total

    def _read(self, w: _Watched) -> tuple[float | None, int, int]:
        nvml = self._nvml.module()
        if nvml is not None and w.nvml is not None:
            rates = nvml.nvmlDeviceGetUtilizationRates(w.nvml)
            memory = nvml.nvmlDeviceGetMemoryInfo(w.nvml)
            return rates.gpu / 100, int(memory.used), int(memory.total)
        free, size = torch.cuda.mem_get_info(w.device)
        return None, int(size - free), int(size)


GPUS = GpuCollector()
REGISTRY.register(GPUS)

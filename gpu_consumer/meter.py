"""The billing meter: how long a job held the GPU for its pipeline run.

Billed figure, ``gpu_ms``: monotonic wall time from just before the pipeline starts to just
after its last kernel finishes. On CUDA the device is synchronized at both ends, so work
queued by an earlier job is not billed to this one and this job's queued kernels are not
left out. It is ``floor(elapsed_ns / 1e6)``: exact to the nanosecond count, and never a
millisecond more than was used (rounding up would overbill every job by up to 1 ms).

Audit figure, ``cuda_ms``: the time between two CUDA events recorded on the stream around
the run (also floored). It excludes host-side gaps before the first kernel and after the
last, so it sits a little below ``gpu_ms``; a large gap between them points at host
overhead. ``None`` on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

import torch

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class Measurement:
    gpu_ms: int
    cuda_ms: int | None
    elapsed_ns: int


class GpuMeter:
    """Use once per run: ``with GpuMeter(device) as meter: pipeline(...)``, then
    ``meter.measurement`` (set even when the run raised)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._started_ns: int | None = None
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
        self.measurement: Measurement | None = None

    def __enter__(self) -> GpuMeter:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._events = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
        self._started_ns = time.perf_counter_ns()
        if self._events is not None:
            self._events[0].record(torch.cuda.current_stream(self.device))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.measurement = self.stop()

    def elapsed_ms(self) -> int:
        """Host-side time so far, for budget checks mid-run (no synchronization: a check
        must not stall the GPU; the final figure is synchronized)."""
        if self._started_ns is None:
            return 0
        return (time.perf_counter_ns() - self._started_ns) // NS_PER_MS

    def stop(self) -> Measurement:
        if self._started_ns is None:
            raise RuntimeError("the meter was not started")
        cuda_ms: int | None = None
        if self._events is not None:
            start, end = self._events
            end.record(torch.cuda.current_stream(self.device))
            torch.cuda.synchronize(self.device)
            cuda_ms = int(start.elapsed_time(end))  # float ms; int() floors a positive value
        elapsed_ns = time.perf_counter_ns() - self._started_ns
        return Measurement(elapsed_ns // NS_PER_MS, cuda_ms, elapsed_ns)

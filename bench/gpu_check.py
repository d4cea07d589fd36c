"""bench.gpu_check: the worker's GPU path checked against the card it runs on, in one run.

Full mode (``--device cuda:0``) builds SD-1.5 and SDXL at full size from their published
configs (random weights: gpu_consumer.full_models; nothing is downloaded) and checks:

- throughput: it/s of the worker path (``run_dispatch``: meter, callbacks, progress, PIL) vs a
  bare diffusers call of the same pipeline on the same card, SD-1.5 512^2 and SDXL 1024^2
  (target >= 0.95x);
- metering: billed ``gpu_ms`` vs the CUDA-event ``cuda_ms`` of the same runs (<= 1 %);
- run overhead: the worker path's wall time beyond the metered pipeline time (<= 2 % at
  SD-1.5 512^2 30 steps; the Kafka/S3 part is bench.consumer_overhead, which needs the stack);
- cancel latency (cancel flag set -> run returned) and the budget stop (billed time past the
  budget), each <= one step;
- the model cache under a budget that holds one of the two models: eviction, and a pinned
  model never evicted (the second load fails instead);
- fp16 and bf16 loading (dtypes of the loaded modules, a finite run in each);
- out of memory forced (the free memory filled first) and classified as a platform failure,
  retryable and never billed.

Reduced mode (``--device cpu --quick``) runs the same checks on the tiny model at 64^2 (a tiny
copy stands in for the second model; the OOM is raised inside the run, since a CPU cannot be
made to run out of memory safely): it proves the script, not the card's figures.

    bench/gpu_check.sh --device cuda:0 [--out gpu-check.json]
    bench/gpu_check.sh --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.calibrate import DEFAULT_MODELS_DIR, TARGETS, QuietChannel, dispatch_for, load_target
from gpu_consumer.model_cache import CacheFull, ModelCache
from gpu_consumer.registry import MODEL_FAMILIES, LoadedPipeline, ModelRegistry
from gpu_consumer.run import RunResult, run_dispatch
from gpu_consumer.tiny_model import build_tiny_sd
from infra.messages import Outcome

THROUGHPUT_MIN = 0.95
METER_GAP_MAX = 0.01
OVERHEAD_MAX = 0.02


@dataclass
class Check:
    name: str
    measured: str
    target: str
    ok: bool | None  # None: reported, no target in this mode
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    family: str  # a bench.calibrate target
    side: int
    steps: int


FULL_CASES = (Case("sd15", 512, 30), Case("sdxl", 1024, 30))
QUICK_CASES = (Case("tiny", 64, 8),)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    value = fn()
    _sync(device)
    return (time.perf_counter() - started) * 1000, value


def _worker_run(loaded: LoadedPipeline, device: torch.device, case: Case) -> RunResult:
    dispatch = dispatch_for(loaded.key, case.side, case.steps, 1)
    return run_dispatch(loaded, dispatch, device, QuietChannel())


def _bare_run(loaded: LoadedPipeline, case: Case) -> Any:
    """The pipeline called as its documentation shows, with the worker's own arguments."""
    with torch.inference_mode():
        return loaded.pipeline(
            prompt="a lighthouse at dusk, oil on canvas",
            num_inference_steps=case.steps,
            width=case.side,
            height=case.side,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(7),
            output_type="np",
        ).images


def throughput_and_meter(
    loaded: LoadedPipeline, device: torch.device, case: Case, repeats: int
) -> tuple[list[Check], float]:
    """Worker path and bare call alternated (they share the card's state and any noise)."""
    _worker_run(loaded, device, case)  # warm-up of both paths: same pipeline
    worker_ms, bare_ms, gpu_ms, cuda_ms = [], [], [], []
    for _ in range(repeats):
        wall, result = _timed(lambda: _worker_run(loaded, device, case), device)
        assert result.outcome is Outcome.COMPLETED, result.failure
        worker_ms.append(wall)
        gpu_ms.append(result.gpu_ms)
        if result.cuda_ms is not None:
            cuda_ms.append(result.cuda_ms)
        bare_ms.append(_timed(lambda: _bare_run(loaded, case), device)[0])
    worker, bare = statistics.median(worker_ms), statistics.median(bare_ms)
    ratio = bare / worker  # it/s ratio: steps / worker time over steps / bare time
    label = f"{case.family} {case.side}^2 {case.steps} steps"
    checks = [
        Check(
            f"throughput {label}",
            f"worker {1000 * case.steps / worker:.2f} it/s vs bare {1000 * case.steps / bare:.2f}"
            f" it/s = {ratio:.3f}x",
            f">= {THROUGHPUT_MIN}x",
            ratio >= THROUGHPUT_MIN,
            {"worker_ms": worker_ms, "bare_ms": bare_ms},
        )
    ]
    billed = statistics.median(gpu_ms)
    if cuda_ms:
        gaps = [abs(g - c) / c for g, c in zip(gpu_ms, cuda_ms, strict=True) if c > 0]
        gap = max(gaps)
        checks.append(
            Check(
                f"meter {label}",
                f"gpu_ms vs CUDA-event ms: worst gap {100 * gap:.2f}%",
                f"<= {100 * METER_GAP_MAX:.0f}%",
                gap <= METER_GAP_MAX,
                {"gpu_ms": gpu_ms, "cuda_ms": cuda_ms},
            )
        )
    else:
        checks.append(
            Check(
                f"meter {label}",
                "no CUDA events on CPU: gpu_ms is host wall time "
                f"(median {billed:.0f} ms, worker wall {worker:.0f} ms)",
                "n/a on CPU",
                None,
                {"gpu_ms": gpu_ms},
            )
        )
    overhead = (worker - billed) / billed
    checks.append(
        Check(
            f"run overhead {label}",
            f"worker wall - gpu_ms = {worker - billed:.1f} ms ({100 * overhead:.2f}%)",
            f"<= {100 * OVERHEAD_MAX:.0f}%",
            overhead <= OVERHEAD_MAX if device.type == "cuda" else None,
        )
    )
    return checks, billed / case.steps


class _CancelAt:
    """A channel whose cancel flag is set as step ``at`` ends, as a cancel request arriving
    mid-run: the run must stop at the next step end (the flag is read there)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.set_at: float | None = None

    def cancelled(self) -> bool:
        return False

    def step(self, step: int, total: int) -> bool:
        if self.set_at is not None:
            return True
        if step >= self.at:
            self.set_at = time.perf_counter()
        return False


def stops(loaded: LoadedPipeline, device: torch.device, case: Case, step_ms: float) -> list[Check]:
    long = Case(case.family, case.side, case.steps * 2)
    channel = _CancelAt(at=case.steps)
    dispatch = dispatch_for(loaded.key, long.side, long.steps, 1)
    result = run_dispatch(loaded, dispatch, device, channel)
    returned = time.perf_counter()
    assert channel.set_at is not None and result.outcome is Outcome.CANCELLED, result.outcome
    latency_ms = (returned - channel.set_at) * 1000
    budget_ms = max(1, int(step_ms * case.steps))
    over = run_dispatch(
        loaded,
        dispatch_for(loaded.key, long.side, long.steps, 1, budget_ms),
        device,
        QuietChannel(),
    )
    past_ms = over.gpu_ms - budget_ms
    return [
        Check(
            "cancel latency",
            f"{latency_ms:.0f} ms = {latency_ms / step_ms:.2f} steps",
            "<= 1 step",
            latency_ms <= step_ms,
            {"latency_ms": latency_ms, "step_ms": step_ms, "steps_done": result.steps_done},
        ),
        Check(
            "budget stop",
            f"{over.outcome.value}, {past_ms} ms past a {budget_ms} ms budget "
            f"= {past_ms / step_ms:.2f} steps",
            "<= 1 step",
            over.outcome is Outcome.BUDGET_EXHAUSTED and past_ms <= step_ms,
            {"gpu_ms": over.gpu_ms, "budget_ms": budget_ms},
        ),
    ]


def cache(registry: ModelRegistry, device: torch.device, keys: tuple[str, str]) -> Check:
    sizes = {k: registry.estimate_bytes(k, device) for k in keys}
    budget = int(max(sizes.values()) * 1.5)  # room for one of them, not both
    models = ModelCache(registry, device, device_budget_bytes=budget, host_budget_bytes=budget)
    first, second = keys
    with models.use(first):
        pass
    with models.use(second):
        evicted = first not in models.loaded()
    refused = False
    with models.use(first):
        try:
            with models.use(second):
                pass
        except CacheFull:
            refused = True
        pinned_kept = first in models.loaded()
    ok = evicted and refused and pinned_kept
    return Check(
        "model cache",
        f"budget {budget >> 20} MiB: {first} evicted for {second}: {evicted}; "
        f"{second} refused while {first} in use: {refused}",
        "evicts idle, never a pinned one",
        ok,
        {"sizes_bytes": sizes, "budget_bytes": budget},
    )


def dtypes(registry: ModelRegistry, device: torch.device, key: str) -> Check:
    from diffusers import AutoPipelineForText2Image

    found: dict[str, Any] = {}
    wanted = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    for dtype in wanted:
        pipe = AutoPipelineForText2Image.from_pretrained(
            registry.resolve(key), torch_dtype=dtype, local_files_only=True
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        with torch.inference_mode():
            image = pipe("a test", num_inference_steps=2, width=64, height=64, output_type="np")
        found[str(dtype)] = {
            "denoiser": str(next(denoiser.parameters()).dtype),
            "vae": str(next(pipe.vae.parameters()).dtype),
            "finite": bool(torch.isfinite(torch.as_tensor(image.images)).all()),
        }
        del pipe
    ok = all(f["denoiser"] == d for d, f in found.items())
    return Check("dtypes", json.dumps(found), "loads and runs in each", ok, found)


class _RaiseOom(QuietChannel):
    def step(self, step: int, total: int) -> bool:
        raise torch.OutOfMemoryError("simulated on CPU, raised inside the run at step 1")


def out_of_memory(loaded: LoadedPipeline, device: torch.device, case: Case) -> Check:
    dispatch = dispatch_for(loaded.key, case.side, case.steps, 1)
    if device.type == "cuda":
        with _filled(device):
            result = run_dispatch(loaded, dispatch, device, QuietChannel())
        how = "forced (free memory filled)"
    else:
        result = run_dispatch(loaded, dispatch, device, _RaiseOom())
        how = "simulated (raised in the run)"
    failure = result.failure
    ok = (
        result.outcome is Outcome.FAILED
        and failure is not None
        and failure.fault == "platform"
        and failure.retryable
        and failure.out_of_memory
    )
    return Check(
        "out of memory",
        f"{how}: {result.outcome.value}, fault {failure and failure.fault}, "
        f"retryable {failure and failure.retryable}",
        "platform failure, retried, never billed",
        ok,
    )


class _Filled:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.block: torch.Tensor | None = None

    def __enter__(self) -> None:
        free, _ = torch.cuda.mem_get_info(self.device)
        self.block = torch.empty(free - (64 << 20), dtype=torch.uint8, device=self.device)

    def __exit__(self, *exc: object) -> None:
        self.block = None
        torch.cuda.empty_cache()


def _filled(device: torch.device) -> _Filled:
    return _Filled(device)


def _models(device: torch.device, quick: bool, models_dir: Path) -> Iterator[tuple[Case, Any]]:
    for case in QUICK_CASES if quick else FULL_CASES:
        yield case, load_target(TARGETS[case.family], device, models_dir)


def run(device: torch.device, quick: bool, models_dir: Path, repeats: int) -> list[Check]:
    checks: list[Check] = []
    keys: list[str] = []
    for case, loaded in _models(device, quick, models_dir):
        found, step_ms = throughput_and_meter(loaded, device, case, repeats)
        checks += found
        if not keys:  # the stops and the OOM once, on the first (smaller) model
            checks += stops(loaded, device, case, step_ms)
            checks.append(out_of_memory(loaded, device, case))
        keys.append(loaded.key)
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    shared = models_dir
    if quick:  # a tiny copy stands in for the second model, in a folder of its own
        shared = models_dir / "tiny-stand-ins"
        build_tiny_sd(shared / "sd-1.5")
        keys = ["tiny-sd", "sd-1.5"]
    registry = ModelRegistry(
        models_dir=shared, cache_dir=models_dir / "cache", families=MODEL_FAMILIES
    )
    checks.append(cache(registry, device, (keys[0], keys[1])))
    checks.append(dtypes(registry, device, keys[0]))
    return checks


def print_table(checks: list[Check], device: torch.device) -> None:
    from rich.console import Console
    from rich.table import Table

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = Table(title=f"GPU check on {name}")
    for col in ("check", "measured", "target", "verdict"):
        table.add_column(col)
    for c in checks:
        verdict = {True: "met", False: "NOT MET", None: "reported"}[c.ok]
        table.add_row(c.name, c.measured, c.target, verdict)
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--quick", action="store_true", help="the tiny model, small sizes")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.quick:
        parser.error("full-size checks need a GPU: use --quick on a CPU")
    started = time.monotonic()
    checks = run(device, args.quick, args.models_dir, args.repeats)
    print_table(checks, device)
    report = {
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quick": args.quick,
        "torch": torch.__version__,
        "seconds": round(time.monotonic() - started, 1),
        "checks": [asdict(c) for c in checks],
    }
    args.out.write_text(json.dumps(report, indent=1, default=str))
    failed = [c.name for c in checks if c.ok is False]
    print(json.dumps({"bench": "gpu_check", "device": str(device), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

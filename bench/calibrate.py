"""bench.calibrate: measure what a job costs per family and device class, fit the estimator's
formula, and write the rows the domain reads (domain/calibration_data.py).

Each target (the tiny model; SD-1.5, SDXL and Flux at full size, built from their published
configs by gpu_consumer.full_models) runs a grid of sizes, step counts and batch sizes through
the worker's own metered path (``gpu_consumer.run.run_dispatch``: the billed ``gpu_ms``), one
warm-up first. The fit is non-negative least squares on relative error of

    gpu_ms = fixed + a x px x batch + b x steps x px x batch [+ c x steps x px^2 x batch]

(px = width x height); the quadratic term (attention) is added only when the linear fit's 95th
percentile relative residual exceeds RESIDUAL_LINEAR_MAX. The row written is the fit rounded
up to integer ms at the family's base size, and its residuals are those of the rounded row
(what the estimator will say), printed per grid point. Each point is the fastest of a few runs:
on a shared machine other work only ever adds time. On a CPU (a worker sharing its cores with
the rest of the stack) the row also records ``contention_pct``: the 90th percentile over all
runs of a run's time over its point's fastest, by which the estimate is scaled.

    python -m bench.calibrate --device cpu --quick            # tiny-sd and SD-1.5 at small sizes
    python -m bench.calibrate --device cuda:0 [--families sd15,sdxl,flux] [--models-dir DIR]
    ... --no-write                                             # print, leave the data alone

Rows of other device classes and families are kept as they are. A CUDA card that is not one of
the domain's device classes (T4, A10G, A100, H100, H200) is measured and printed, not written,
unless ``--device-class`` names the class it stands for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares, nnls

from domain.calibration import (
    INPUT_TERM_FIELDS,
    MEASURED,
    Calibration,
    DeviceClass,
    estimate_from,
)
from domain.parameters import RunParameters
from gpu_consumer import full_models
from gpu_consumer.registry import MODEL_FAMILIES, LoadedPipeline, ModelRegistry
from gpu_consumer.run import RunResult, run_dispatch
from infra.messages import Dispatch

DATA_FILE = Path(__file__).resolve().parent.parent / "domain" / "calibration_data.py"
RESIDUAL_LINEAR_MAX = 0.10  # above this p95 relative residual, attention's quadratic term
BUDGET_MS = 3_600_000  # a calibration run is never stopped at a budget
DEFAULT_MODELS_DIR = Path("/tmp/pinksea-full-models")


@dataclass(frozen=True)
class Grid:
    sides: tuple[int, ...]
    steps: tuple[int, ...]
    batches: tuple[int, ...]
    repeats: int

    def points(self) -> list[tuple[int, int, int]]:
        return [(s, n, b) for s in self.sides for n in self.steps for b in self.batches]


@dataclass(frozen=True)
class Target:
    row_key: str  # the calibration row: a family (domain.catalog) or a model key
    model: str  # the registry key it is loaded as
    build: str | None  # the full_models family to build, None: the registry makes it
    base_side: int  # the size the row is written at


TARGETS = {
    "tiny": Target("tiny-sd", "tiny-sd", None, 256),
    "sd15": Target("sd1.5", "sd-1.5", "sd15", 512),
    "sdxl": Target("sdxl", "sdxl-base-1.0", "sdxl", 1024),
    "flux": Target("flux", "flux-dev", "flux", 1024),
}

# CPU grids are small so the run stays in CI time; CUDA grids span the sizes that are sold.
GRIDS: dict[tuple[str, str, bool], Grid] = {
    ("tiny", "cpu", True): Grid((64, 128, 192), (2, 4, 8), (1, 2), 5),
    ("tiny", "cpu", False): Grid((64, 128, 192, 256), (2, 4, 8, 16), (1, 2), 7),
    ("sd15", "cpu", True): Grid((64, 96, 128), (1, 2), (1,), 3),
    ("sd15", "cpu", False): Grid((64, 128, 192), (1, 2, 4), (1, 2), 2),
    ("sd15", "cuda", True): Grid((384, 512), (5, 15), (1, 2), 1),
    ("sd15", "cuda", False): Grid((384, 512, 768), (10, 20, 30), (1, 2), 2),
    ("sdxl", "cuda", True): Grid((768, 1024), (5, 10), (1,), 1),
    ("sdxl", "cuda", False): Grid((768, 1024, 1280), (10, 20, 30), (1, 2), 2),
    ("flux", "cuda", True): Grid((512, 1024), (2, 4), (1,), 1),
    ("flux", "cuda", False): Grid((512, 768, 1024), (4, 8, 16), (1,), 2),
}
DEFAULT_FAMILIES = {"cpu": ("tiny", "sd15"), "cuda": ("sd15", "sdxl", "flux")}


class QuietChannel:
    """A job channel that is never cancelled and publishes nothing (no Redis in a bench)."""

    def cancelled(self) -> bool:
        return False

    def step(self, step: int, total: int) -> bool:
        return False


def dispatch_for(
    model: str, side: int, steps: int, batch: int, budget_ms: int = BUDGET_MS
) -> Dispatch:
    params = RunParameters(
        model=model,
        prompt="a lighthouse at dusk, oil on canvas",
        steps=steps,
        width=side,
        height=side,
        batch_size=batch,
        seed=7,
    )
    return Dispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        worker_id="bench",
        user_id="bench",
        tier="basic",
        budget_ms=budget_ms,
        dispatched_at=datetime.now(UTC),
        parameters=params,
    )


def load_target(
    target: Target, device: torch.device, models_dir: Path, dtype: torch.dtype | None = None
) -> LoadedPipeline:
    """Build the target if need be, then load it through the registry like a real model."""
    if target.build is not None:
        build_dtype = dtype or (torch.bfloat16 if target.build == "flux" else torch.float16)
        full_models.build(target.build, models_dir / target.model, build_dtype, device.type)
    registry = ModelRegistry(
        models_dir=models_dir, cache_dir=models_dir / "cache", families=MODEL_FAMILIES
    )
    loaded = registry.load(target.model, device)
    loaded.pipeline.to(device)
    return loaded


def measure(loaded: LoadedPipeline, device: torch.device, side: int, steps: int, batch: int) -> int:
    result: RunResult = run_dispatch(
        loaded, dispatch_for(loaded.key, side, steps, batch), device, QuietChannel()
    )
    assert result.failure is None, f"calibration run failed: {result.failure}"
    return result.gpu_ms


# ------------------------------------------------------------------------------ the fit


@dataclass(frozen=True)
class Fit:
    coefficients: dict[str, float]  # fixed, per_px, per_step_px, per_step_px2 (ms per unit)
    row: Calibration
    residuals: list[float]  # of the rounded row, relative, per point

    @property
    def residual_p95(self) -> float:
        ordered = sorted(abs(r) for r in self.residuals)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _design(points: list[tuple[int, int, int]], quadratic: bool) -> np.ndarray:
    rows = []
    for side, steps, batch in points:
        px = float(side * side)
        row = [1.0, px * batch, steps * px * batch]
        if quadratic:
            row.append(steps * px * px * batch)
        rows.append(row)
    return np.array(rows)


def fit(
    points: list[tuple[int, int, int]],
    gpu_ms: list[int],
    base_side: int,
    provenance: dict[str, Any],
) -> Fit:
    """Non-negative least squares on relative error; the quadratic term only if needed."""
    assert len(points) == len(gpu_ms) >= 4, "a fit needs at least four points"
    y = np.array(gpu_ms, dtype=float)
    best: Fit | None = None
    for quadratic in (False, True):
        design = _design(points, quadratic)
        scale = design.max(axis=0)  # columns of comparable size for the solver
        relative = design / scale / y[:, None]
        start, _ = nnls(relative, np.ones(len(y)))
        # Then a robust loss: on a shared machine one run in a grid can take several times
        # its neighbours, and squared error would let it drag every coefficient.
        robust = least_squares(
            lambda c, a=relative: a @ c - 1.0,
            np.maximum(start, 1e-9),
            bounds=(0.0, np.inf),
            loss="soft_l1",
            f_scale=0.1,
        )
        coef = robust.x / scale
        names = ["fixed", "per_px", "per_step_px", "per_step_px2"][: len(coef)]
        candidate = _rounded(dict(zip(names, coef.tolist(), strict=True)), points, y, base_side)
        candidate = Fit(
            candidate.coefficients, _with(candidate.row, provenance), candidate.residuals
        )
        if best is None or candidate.residual_p95 < best.residual_p95:
            best = candidate
        if best.residual_p95 <= RESIDUAL_LINEAR_MAX:
            break
    assert best is not None
    return Fit(
        best.coefficients,
        _with(best.row, {**provenance, "residual_p95_pct": round(100 * best.residual_p95, 1)}),
        best.residuals,
    )


def _rounded(
    coef: dict[str, float], points: list[tuple[int, int, int]], y: np.ndarray, base_side: int
) -> Fit:
    base = base_side * base_side
    row = Calibration(
        base_pixels=base,
        fixed_ms=math.ceil(coef["fixed"]),
        overhead_ms=math.ceil(coef["per_px"] * base),
        step_ms=max(1, math.ceil(coef["per_step_px"] * base)),
        step_quad_ms=math.ceil(coef.get("per_step_px2", 0.0) * base * base),
    )
    said = [estimate_from(row, steps=n, width=s, height=s, batch_size=b) for s, n, b in points]
    residuals = [(e - m) / m for e, m in zip(said, y.tolist(), strict=True)]
    return Fit(coef, row, residuals)


def _with(row: Calibration, fields: dict[str, Any]) -> Calibration:
    values = {**row.__dict__, **fields}
    return Calibration(**values)


# ------------------------------------------------------------------------------ the data file


def device_class(device: torch.device, override: str | None) -> DeviceClass | None:
    if override:
        return DeviceClass(override)
    if device.type == "cpu":
        return DeviceClass.CPU
    name = torch.cuda.get_device_name(device).upper()
    for cls in DeviceClass:
        if cls is not DeviceClass.CPU and cls.value.upper() in name:
            return cls
    return None


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = f", load {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}{load}"


def render(rows: list[dict[str, Any]], device_of_model: dict[str, tuple[str, str]]) -> str:
    """The data module's text: one row per line group, keys in a fixed order."""
    order = ["key", "device", *Calibration.__dataclass_fields__]
    lines = [
        '"""Calibration rows of the estimator (domain/calibration.py), written by ``python -m',
        "bench.calibrate``, which keeps the rows it did not measure as they are. Hand edits are",
        "for rows marked ``hand-estimate, not measured`` only.",
        '"""',
        "",
        "from typing import Any",
        "",
        "ROWS: tuple[dict[str, Any], ...] = (",
    ]
    for row in sorted(rows, key=lambda r: (r["key"], r["device"])):
        lines.append("    {")
        for name in order:
            if name in row and row[name] is not None:
                lines.append(f"        {name!r}: {row[name]!r},".replace("'", '"'))
        lines.append("    },")
    lines += [
        ")",
        "",
        "# model -> (the device class it runs on whatever the tier, the row key that prices it).",
        "# tiny-sd and tiny-sd-inpaint run on CPU workers (tests, the demo); the inpainting",
        "# variant's UNet differs only in its 9 input channels, so it is priced by tiny-sd's row.",
        "DEVICE_OF_MODEL: dict[str, tuple[str, str]] = {",
        *(f'    "{m}": ("{d}", "{k}"),' for m, (d, k) in sorted(device_of_model.items())),
        "}",
        "",
    ]
    return "\n".join(lines)


def write_rows(measured: dict[tuple[str, str], Calibration], path: Path = DATA_FILE) -> None:
    from domain import calibration_data

    kept = [r for r in calibration_data.ROWS if (r["key"], r["device"]) not in measured]
    before = {(r["key"], r["device"]): r for r in calibration_data.ROWS}
    # The grid here is text-to-image only: a rewritten row keeps its inputs' terms as they were.
    new = [
        {
            "key": key,
            "device": device,
            **row.__dict__,
            **{
                f: before[(key, device)][f]
                for f in INPUT_TERM_FIELDS
                if f in before.get((key, device), {})
            },
        }
        for (key, device), row in measured.items()
    ]
    for row in new:
        assert row["source"] == MEASURED
    path.write_text(render([dict(r) for r in kept] + new, calibration_data.DEVICE_OF_MODEL))


# ------------------------------------------------------------------------------ the run


def calibrate(
    device: torch.device,
    families: tuple[str, ...],
    quick: bool,
    models_dir: Path,
    write: bool,
    device_class_override: str | None = None,
) -> dict[str, Any]:
    cls = device_class(device, device_class_override)
    kind = device.type
    today = datetime.now(UTC).date().isoformat()
    report: dict[str, Any] = {"device": str(device), "device_class": cls, "targets": {}}
    measured: dict[tuple[str, str], Calibration] = {}
    for family in families:
        grid = GRIDS.get((family, kind, quick))
        if grid is None:
            print(f"{family}: no {kind} grid (too large for this device); skipped")
            continue
        target = TARGETS[family]
        started = time.monotonic()
        loaded = load_target(target, device, models_dir)
        load_s = time.monotonic() - started
        measure(loaded, device, grid.sides[0], grid.steps[0], grid.batches[0])  # warm-up
        points = grid.points()
        # Whole passes over the grid, not one point's repeats back to back: a burst of other
        # work on the machine then spoils one run of several points, not every run of one.
        passes = [
            [measure(loaded, device, s, n, b) for s, n, b in points] for _ in range(grid.repeats)
        ]
        times = [min(runs) for runs in zip(*passes, strict=True)]
        contention_pct = _contention_pct(passes) if device.type == "cpu" else 100
        provenance = {
            "source": MEASURED,
            "measured_at": today,
            "machine": machine(device),
            "grid": _grid_text(grid),
            "contention_pct": contention_pct,
        }
        # The row is written at the largest size measured: a CPU grid stops far below the
        # family's native size, and its fit says nothing about sizes it never saw.
        base_side = min(target.base_side, max(grid.sides))
        result = fit(points, times, base_side, provenance)
        _print_fit(target, base_side, points, times, result, load_s)
        sys.stdout.flush()
        report["targets"][family] = {
            "row": {k: v for k, v in result.row.__dict__.items() if v is not None},
            "coefficients": result.coefficients,
            "points": [
                {"side": s, "steps": n, "batch": b, "gpu_ms": t, "residual": round(r, 4)}
                for (s, n, b), t, r in zip(points, times, result.residuals, strict=True)
            ],
            "residual_p95": round(result.residual_p95, 4),
            "measure_s": round(time.monotonic() - started - load_s, 1),
        }
        if cls is not None:
            measured[(target.row_key, cls.value)] = result.row
        del loaded
    if write and measured:
        write_rows(measured)
        print(f"wrote {len(measured)} rows to {DATA_FILE}")
    elif write and cls is None:
        print("this card is not one of the domain's device classes: nothing written")
    return report


def _contention_pct(passes: list[list[int]]) -> int:
    """How much slower than their point's fastest run this (shared) machine's runs were: the
    90th percentile over every run of run / fastest, in percent (at least 100). A CPU worker
    shares its cores with the rest of the stack, so its jobs' holds need that room."""
    fastest = [max(1, min(runs)) for runs in zip(*passes, strict=True)]
    ratios = sorted(t / f for one_pass in passes for t, f in zip(one_pass, fastest, strict=True))
    p90 = ratios[min(len(ratios) - 1, math.ceil(0.9 * len(ratios)) - 1)]
    return max(100, math.ceil(100 * p90))


def _grid_text(grid: Grid) -> str:
    return (
        f"sides {list(grid.sides)} x steps {list(grid.steps)} x batch {list(grid.batches)}, "
        f"fastest of {grid.repeats}"
    )


def _print_fit(
    target: Target,
    base_side: int,
    points: list[tuple[int, int, int]],
    times: list[int],
    result: Fit,
    load_s: float,
) -> None:
    row = result.row
    print(
        f"\n{target.row_key}: fixed {row.fixed_ms} ms + per image {row.overhead_ms} ms + per step "
        f"{row.step_ms} ms (+ quadratic {row.step_quad_ms} ms) at {base_side}^2; "
        f"residual p95 {100 * result.residual_p95:.1f}%; contention {row.contention_pct}% "
        f"(load {load_s:.1f} s)"
    )
    print(f"{'side':>6} {'steps':>5} {'batch':>5} {'gpu_ms':>8} {'fit says':>8} {'resid':>7}")
    fastest = _with(row, {"contention_pct": 100})
    for (s, n, b), t, r in zip(points, times, result.residuals, strict=True):
        said = estimate_from(fastest, steps=n, width=s, height=s, batch_size=b)
        print(f"{s:>6} {n:>5} {b:>5} {t:>8} {said:>8} {100 * r:>6.1f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--families", help="comma-separated: tiny, sd15, sdxl, flux")
    parser.add_argument("--quick", action="store_true", help="small grids, one repeat")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--device-class", choices=[c.value for c in DeviceClass])
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    families = tuple(args.families.split(",")) if args.families else DEFAULT_FAMILIES[device.type]
    unknown = set(families) - set(TARGETS)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {sorted(TARGETS)}")
    report = calibrate(
        device, families, args.quick, args.models_dir, not args.no_write, args.device_class
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(
        json.dumps(
            {
                "bench": "calibrate",
                **{k: v for k, v in report.items() if k != "targets"},
                "residual_p95": {f: t["residual_p95"] for f, t in report["targets"].items()},
            },
            default=str,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

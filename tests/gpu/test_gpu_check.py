"""bench.gpu_check's reduced CPU mode (the tiny model): the script runs end to end, prints its
table and writes its JSON, and the checks that do not depend on timing hold. The CUDA run is
for a host with a GPU (BENCHMARKS.md); its figures are not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import gpu_check
from bench.calibrate import fit


def test_quick_cpu_mode_writes_every_check(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    gpu_check.main(
        ["--device", "cpu", "--quick", "--models-dir", str(tmp_path), "--repeats", "1",
         "--out", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {
        "throughput tiny 64^2 8 steps",
        "meter tiny 64^2 8 steps",
        "run overhead tiny 64^2 8 steps",
        "cancel latency",
        "budget stop",
        "out of memory",
        "model cache",
        "dtypes",
    }
    assert report["card"] == "cpu" and report["quick"] is True
    # Timing-free verdicts: the OOM is a retryable platform failure, the cache evicts idle
    # models and refuses to evict a pinned one, the CPU loads in fp32.
    for name in ("out of memory", "model cache", "dtypes"):
        assert checks[name]["ok"] is True, checks[name]
    assert checks["budget stop"]["measured"].startswith("budget_exhausted")
    # Cancelled as step 8 of 16 ended: stopped at the next step end, never decoded.
    assert checks["cancel latency"]["figures"]["steps_done"] == 9
    assert checks["meter tiny 64^2 8 steps"]["ok"] is None  # no CUDA events on a CPU


def test_the_fit_recovers_a_known_cost_and_reports_its_residuals() -> None:
    """Times made from a known formula (with attention's quadratic part) are fitted back."""
    points = [(s, n, b) for s in (256, 512, 768) for n in (5, 10, 20) for b in (1, 2)]
    px = np.array([s * s for s, _, _ in points], dtype=float)
    steps = np.array([n for _, n, _ in points], dtype=float)
    batch = np.array([b for _, _, b in points], dtype=float)
    truth = 300 + 2e-4 * px * batch + 1e-4 * steps * px * batch + 2e-10 * steps * px**2 * batch
    result = fit(
        points,
        [int(t) for t in truth],
        512,
        {"source": "measured", "measured_at": "2026-12-01", "machine": "synthetic", "grid": "g"},
    )
    assert result.row.step_quad_ms > 0  # the linear fit was not good enough
    assert result.coefficients["per_step_px2"] > 0
    # The row is the fit rounded up to whole ms at 512^2: it says a little more, never less.
    assert all(-0.001 <= r < 0.05 for r in result.residuals), result.residuals
    assert result.row.residual_p95_pct == round(100 * result.residual_p95, 1)

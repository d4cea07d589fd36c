"""Calibration rows of the estimator (domain/calibration.py), written by ``python -m
bench.calibrate``, which keeps the rows it did not measure as they are. Hand edits are
for rows marked ``hand-estimate, not measured`` only.
"""

from typing import Any

ROWS: tuple[dict[str, Any], ...] = (
    {
        "key": "flux",
        "device": "a100",
        "base_pixels": 1048576,
        "step_ms": 600,
        "overhead_ms": 600,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "flux",
        "device": "a10g",
        "base_pixels": 1048576,
        "step_ms": 1800,
        "overhead_ms": 1500,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "flux",
        "device": "t4",
        "base_pixels": 1048576,
        "step_ms": 4000,
        "overhead_ms": 3000,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sd1.5",
        "device": "a100",
        "base_pixels": 262144,
        "step_ms": 40,
        "overhead_ms": 150,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sd1.5",
        "device": "a10g",
        "base_pixels": 262144,
        "step_ms": 85,
        "overhead_ms": 300,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sd1.5",
        "device": "cpu",
        "base_pixels": 16384,
        "step_ms": 1955,
        "overhead_ms": 1,
        "fixed_ms": 541,
        "step_quad_ms": 1,
        "contention_pct": 443,
        "source": "measured",
        "measured_at": "2026-12-01",
        "machine": "Intel(R) Xeon(R) Processor, 2 threads, torch 2.15.0+cu132, load 3.1",
        "grid": "sides [64, 96, 128] x steps [1, 2] x batch [1], fastest of 3",
        "residual_p95_pct": 53.5,
    },
    {
        "key": "sd1.5",
        "device": "t4",
        "base_pixels": 262144,
        "step_ms": 180,
        "overhead_ms": 600,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sdxl",
        "device": "a100",
        "base_pixels": 1048576,
        "step_ms": 150,
        "overhead_ms": 400,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sdxl",
        "device": "a10g",
        "base_pixels": 1048576,
        "step_ms": 350,
        "overhead_ms": 900,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "sdxl",
        "device": "t4",
        "base_pixels": 1048576,
        "step_ms": 1000,
        "overhead_ms": 2000,
        "source": "hand-estimate, not measured",
    },
    {
        "key": "tiny-sd",
        "device": "cpu",
        "base_pixels": 36864,
        "step_ms": 27,
        "overhead_ms": 3,
        "fixed_ms": 37,
        "step_quad_ms": 0,
        "contention_pct": 599,
        "source": "measured",
        "measured_at": "2026-12-01",
        "machine": "Intel(R) Xeon(R) Processor, 2 threads, torch 2.15.0+cu132, load 3.2",
        "grid": "sides [64, 128, 192] x steps [2, 4, 8] x batch [1, 2], fastest of 5",
        "residual_p95_pct": 28.7,
    },
)

# model -> (the device class it runs on whatever the tier, the row key that prices it).
# tiny-sd and tiny-sd-inpaint run on CPU workers (tests, the demo); the inpainting
# variant's UNet differs only in its 9 input channels, so it is priced by tiny-sd's row.
DEVICE_OF_MODEL: dict[str, tuple[str, str]] = {
    "tiny-sd": ("cpu", "tiny-sd"),
    "tiny-sd-inpaint": ("cpu", "tiny-sd"),
}

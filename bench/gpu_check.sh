#!/usr/bin/env bash
# The CUDA check of issue 16 as one prepared run (bench/gpu_check.py says what it checks):
#   bench/gpu_check.sh --device cuda:0 [--out gpu-check.json]    on a GPU host, <= 8 minutes
#   bench/gpu_check.sh --device cpu --quick                      anywhere (the tiny model)
# Downloads nothing: the full-size models are built from their configs with random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout --signal=INT --kill-after=10 480 "$PYTHON" -u -m bench.gpu_check "$@"

"""``pinksea gpu-worker``: run dispatched diffusion jobs on one GPU (or the CPU)."""

from __future__ import annotations

import asyncio
import re
import socket

import typer

from cli.main import app
from cli.runtime import run_process
from infra.settings import Settings
from infra.topics import GPU_TIERS


def default_worker_id(device: str) -> str:
    """Stable across restarts of the same machine and device, so a restarted worker resumes
    its own consumer group where it left off."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{device}")


@app.command("gpu-worker")
def gpu_worker(
    tier: str = typer.Option(..., help=f"GPU tier to serve: {', '.join(GPU_TIERS)}."),
    device: str | None = typer.Option(
        None, help="torch device, e.g. cuda:0 or cpu (default: cuda:0 when there is a GPU)."
    ),
    worker_id: str | None = typer.Option(None, help="Worker id (default: <hostname>-<device>)."),
    metrics_port: int = typer.Option(
        9105, envvar="PINKSEA_METRICS_PORT", help="Port of /metrics (0: none)."
    ),
) -> None:
    """Consume the tier's dispatches, run them, upload the images, report GPU-ms."""
    if tier not in GPU_TIERS:
        raise typer.BadParameter(f"choose one of {', '.join(GPU_TIERS)}", param_hint="--tier")
    import torch

    from gpu_consumer.worker import GpuWorker
    from infra.kafka import ensure_topics

    chosen = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    identity = worker_id or default_worker_id(chosen)

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await ensure_topics(settings)
        await GpuWorker(settings, tier, identity, chosen).run(stop)

    run_process("gpu-worker", main, metrics_port)

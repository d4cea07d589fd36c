"""Settings only GPU workers read (``PINKSEA_*`` environment variables, like infra's Settings)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GpuWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINKSEA_", env_file=".env", extra="ignore")

    models_dir: Path | None = Field(
        default=Path("/models"),
        description="Shared model folder (EFS), one subfolder per model key.",
    )
    models_cache_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "pinksea-models",
        description="Local folder for models downloaded from S3 and for the tiny model.",
    )
    models_s3_bucket: str | None = Field(
        default=None, description="Bucket of model folders, if any."
    )
    models_s3_prefix: str = Field(default="models/", description="Prefix of model folders in it.")
    gpu_memory_budget_mb: int | None = Field(
        default=None, description="Memory for cached pipelines on the GPU (default: 60% of it)."
    )
    host_memory_budget_mb: int | None = Field(
        default=None, description="Host memory for cached pipelines (default: 40% of RAM)."
    )
    heartbeat_interval_s: float = Field(default=2.0, description="Seconds between heartbeats.")
    stop_grace_s: float = Field(
        default=60.0,
        description="On shutdown, how long a running job may go on before it is aborted.",
    )
    max_dispatch_age_s: float = Field(
        default=600.0, description="Older dispatches are refused as stale (reported, never run)."
    )
    thumbnail_max_px: int = Field(default=256, description="Longest side of a WebP thumbnail.")

    def device_budget_bytes(self, device: torch.device) -> int:
        if device.type != "cuda":
            return self.host_budget_bytes()
        if self.gpu_memory_budget_mb is not None:
            return self.gpu_memory_budget_mb * 2**20
        # The rest is for activations: a large batch at a large size needs several GB.
        return int(torch.cuda.get_device_properties(device).total_memory * 0.6)

    def host_budget_bytes(self) -> int:
        if self.host_memory_budget_mb is not None:
            return self.host_memory_budget_mb * 2**20
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4)

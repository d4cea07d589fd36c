"""Settings only GPU workers read (``PINKSEA_*`` environment variables, like infra's Settings)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.settings import ENV_PREFIX

if TYPE_CHECKING:  # torch is imported where it is used: every process checks these names
    import torch


class GpuWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

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
        default=600.0,
        description="A dispatch older than this when it reaches the worker is refused as stale "
        "(reported, never run); one held queued behind a running job is not aged by its wait.",
    )
    thumbnail_max_px: int = Field(default=256, description="Longest side of a WebP thumbnail.")
    # S3 outages: botocore retries each request a few times (jittered), the upload retries
    # whole requests with its own jittered backoff, and the deadline bounds the lot so a job
    # whose images cannot be stored fails (retried elsewhere, never billed) instead of hanging.
    upload_deadline_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a job's image upload keeps retrying S3 before the attempt fails "
        "as storage_unavailable (never billed).",
    )
    upload_backoff_s: float = Field(
        default=0.5, gt=0, description="First pause between upload retries (doubles, full jitter)."
    )
    upload_backoff_max_s: float = Field(
        default=8.0, gt=0, description="Longest pause between upload retries."
    )
    s3_max_attempts: int = Field(
        default=3,
        ge=1,
        description="HTTP attempts per S3 request, first included (botocore's standard retry "
        "mode: jittered backoff).",
    )
    s3_connect_timeout_s: float = Field(
        default=3.0, gt=0, description="Connect timeout of the workers' S3 requests."
    )
    s3_read_timeout_s: float = Field(
        default=20.0, gt=0, description="Read timeout of the workers' S3 requests."
    )

    def device_budget_bytes(self, device: torch.device) -> int:
        if device.type != "cuda":
            return self.host_budget_bytes()
        if self.gpu_memory_budget_mb is not None:
            return self.gpu_memory_budget_mb * 2**20
        import torch

        # The rest is for activations: a large batch at a large size needs several GB.
        return int(torch.cuda.get_device_properties(device).total_memory * 0.6)

    def host_budget_bytes(self) -> int:
        if self.host_memory_budget_mb is not None:
            return self.host_memory_budget_mb * 2**20
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4)

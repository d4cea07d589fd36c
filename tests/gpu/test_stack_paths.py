"""Model downloads from S3, image uploads, and live progress and cancel through Redis, on the
local stack."""

from __future__ import annotations

import io
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from gpu_consumer.outputs import ImageStore, UploadFailed, image_key, thumbnail_key
from gpu_consumer.registry import (
    MANIFEST_NAME,
    ChecksumMismatch,
    LoadedPipeline,
    ModelRegistry,
    download_model,
    upload_model,
)
from gpu_consumer.run import RedisJobChannel, run_dispatch
from infra import redis_keys
from infra.messages import Outcome
from infra.settings import Settings
from tests.gpu.conftest import make_dispatch

CPU = torch.device("cpu")


@pytest.fixture
def uploaded_tiny(registry: ModelRegistry, s3_client: Any, settings: Settings) -> str:
    """The tiny model uploaded as ``sd-1.5`` under a prefix of this test's own."""
    prefix = f"models-{uuid.uuid4().hex[:8]}/"
    upload_model(s3_client, settings.s3_bucket, f"{prefix}sd-1.5/", registry.resolve("tiny-sd"))
    return prefix


def test_s3_model_is_verified_downloaded_once_and_loads(
    uploaded_tiny: str, s3_client: Any, settings: Settings, tmp_path: Path
) -> None:
    registry = ModelRegistry(
        models_dir=None,
        cache_dir=tmp_path,
        s3_client=s3_client,
        s3_bucket=settings.s3_bucket,
        s3_prefix=uploaded_tiny,
    )
    folder = registry.resolve("sd-1.5")
    assert folder == tmp_path / "sd-1.5" and (folder / MANIFEST_NAME).is_file()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= {
        f["path"] for f in manifest
    }
    # Once verified, the copy is used without asking S3 again.
    offline = ModelRegistry(
        models_dir=None, cache_dir=tmp_path, s3_client=object(), s3_bucket="unreachable"
    )
    assert offline.resolve("sd-1.5") == folder
    result = run_dispatch(offline.load("sd-1.5", CPU), make_dispatch(model="sd-1.5"), CPU, _Quiet())
    assert result.outcome is Outcome.COMPLETED


def test_a_corrupted_model_file_is_rejected(
    uploaded_tiny: str, s3_client: Any, settings: Settings, tmp_path: Path
) -> None:
    key = f"{uploaded_tiny}sd-1.5/unet/diffusion_pytorch_model.safetensors"
    body = bytearray(s3_client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read())
    body[-1] ^= 0xFF  # same size, one bit pattern off
    s3_client.put_object(Bucket=settings.s3_bucket, Key=key, Body=bytes(body))
    with pytest.raises(ChecksumMismatch, match=r"unet/diffusion_pytorch_model\.safetensors"):
        download_model(s3_client, settings.s3_bucket, f"{uploaded_tiny}sd-1.5/", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # nothing half-verified is left to load


def test_images_and_thumbnails_land_at_deterministic_keys(
    s3_client: Any, settings: Settings
) -> None:
    store = ImageStore(s3_client, settings.s3_bucket)
    job_id = uuid.uuid4()
    images = [Image.new("RGB", (640, 320), color) for color in ("red", "blue")]
    records = store.save("user-7", job_id, images)
    assert [r.name for r in records] == [f"{job_id}-0", f"{job_id}-1"]
    assert records[0].key == image_key("user-7", f"{job_id}-0")
    assert records[0].key == f"users/user-7/images/{job_id}-0.png"
    assert records[1].thumbnail_key == f"users/user-7/thumbnails/{job_id}-1.webp"
    png = s3_client.get_object(Bucket=settings.s3_bucket, Key=records[0].key)
    assert png["ContentType"] == "image/png" and png["ContentLength"] == records[0].size_bytes
    thumb = s3_client.get_object(
        Bucket=settings.s3_bucket, Key=thumbnail_key("user-7", records[0].name)
    )
    assert Image.open(io.BytesIO(thumb["Body"].read())).size == (256, 128)
    # A re-run writes the same keys: overwritten, never duplicated.
    store.save("user-7", job_id, images)
    listed = s3_client.list_objects_v2(Bucket=settings.s3_bucket, Prefix="users/user-7/")
    assert sum(str(job_id) in o["Key"] for o in listed["Contents"]) == 4


def test_upload_gives_up_after_its_retries(s3_client: Any) -> None:
    store = ImageStore(s3_client, f"no-such-bucket-{uuid.uuid4().hex[:8]}", backoff_s=0.01)
    with pytest.raises(UploadFailed):
        store.save("u", uuid.uuid4(), [Image.new("RGB", (8, 8))])


def test_progress_is_published_and_a_cancel_stops_the_run(
    tiny: LoadedPipeline, redis_sync: Any, settings: Settings
) -> None:
    prefix = settings.redis_key_prefix
    dispatch = make_dispatch(steps=30, scheduler="ddim")
    subscriber = redis_sync.pubsub()
    subscriber.subscribe(redis_keys.progress_channel(prefix, dispatch.job_id))
    subscriber.get_message(timeout=1.0)  # the subscription confirmation
    steps: list[int] = []

    def cancel_after_first_step() -> None:
        # As the API does when a user cancels: set the flag, the worker reads it.
        while message := subscriber.get_message(timeout=10.0):
            if message["type"] != "message":
                continue
            steps.append(json.loads(message["data"])["step"])
            redis_sync.set(redis_keys.cancel_flag(prefix, dispatch.job_id), "1")
            return

    canceller = threading.Thread(target=cancel_after_first_step)
    canceller.start()
    channel = RedisJobChannel(redis_sync, prefix, dispatch.job_id, dispatch.attempt)
    result = run_dispatch(tiny, dispatch, CPU, channel)
    canceller.join()
    subscriber.close()
    assert steps == [1]
    assert result.outcome is Outcome.CANCELLED and result.images == []
    # The flag was set after step 1 was published: seen at the end of step 2 or, if it landed
    # while step 2 was being checked, at the end of step 3.
    assert result.steps_done in (2, 3)
    last = json.loads(redis_sync.get(redis_keys.last_progress(prefix, dispatch.job_id)))
    assert last["job_id"] == str(dispatch.job_id) and last["total_steps"] == 30
    assert last["step"] == result.steps_done
    assert redis_sync.ttl(redis_keys.last_progress(prefix, dispatch.job_id)) > 0


class _Quiet:
    def cancelled(self) -> bool:
        return False

    def step(self, step: int, total: int) -> bool:
        return False

"""Generated images to S3: the PNG and a WebP thumbnail at keys derived from the job.

    users/{user_id}/images/{job_id}-{index}.png
    users/{user_id}/thumbnails/{job_id}-{index}.webp

Every attempt of a job writes the same keys, so a re-run overwrites instead of leaving
orphans. Each object is retried with exponential backoff; past the last attempt the upload
fails as a platform error (the job is retried, nothing is billed).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from infra.messages import FinishedImage
from infra.settings import Settings

log = structlog.get_logger("gpu_consumer.outputs")

THUMBNAIL_MAX_PX = 256


class UploadFailed(Exception):
    pass


def s3_client(settings: Settings, *, max_attempts: int = 1, max_pool_connections: int = 16) -> Any:
    """An S3 client for the configured endpoint. By default botocore does not retry: the
    image uploads retry with their own backoff and decide what a final failure means."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        config=Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max_pool_connections,
        ),
    )


def image_name(job_id: UUID | str, index: int) -> str:
    return f"{job_id}-{index}"


def image_key(user_id: str, name: str) -> str:
    return f"users/{user_id}/images/{name}.png"


def thumbnail_key(user_id: str, name: str) -> str:
    return f"users/{user_id}/thumbnails/{name}.webp"


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_thumbnail(image: Image.Image, max_px: int = THUMBNAIL_MAX_PX) -> bytes:
    thumbnail = image.copy()
    thumbnail.thumbnail((max_px, max_px))  # keeps the aspect ratio, never enlarges
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


class ImageStore:
    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        attempts: int = 4,
        backoff_s: float = 0.2,
        thumbnail_max_px: int = THUMBNAIL_MAX_PX,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.thumbnail_max_px = thumbnail_max_px

    def save(
        self, user_id: str, job_id: UUID, images: Sequence[Image.Image]
    ) -> list[FinishedImage]:
        """Encode and upload every image and its thumbnail (in parallel); their records in
        order. Raises UploadFailed if any object could not be stored."""
        if not images:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(images))) as pool:
            return list(
                pool.map(lambda pair: self._save_one(user_id, job_id, *pair), enumerate(images))
            )

    def _save_one(
        self, user_id: str, job_id: UUID, index: int, image: Image.Image
    ) -> FinishedImage:
        name = image_name(job_id, index)
        png = encode_png(image)
        record = FinishedImage(
            name=name,
            key=image_key(user_id, name),
            thumbnail_key=thumbnail_key(user_id, name),
            size_bytes=len(png),
            width=image.width,
            height=image.height,
        )
        self._put(record.key, png, "image/png")
        self._put(
            record.thumbnail_key, encode_thumbnail(image, self.thumbnail_max_px), "image/webp"
        )
        return record

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                )
                return
            except (BotoCoreError, ClientError) as e:
                if attempt == self.attempts:
                    raise UploadFailed(f"s3://{self.bucket}/{key}: {e}") from e
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("upload retry", key=key, attempt=attempt, delay_s=delay, error=str(e))
                time.sleep(delay)

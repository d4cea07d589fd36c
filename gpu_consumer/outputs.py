"""Generated images to S3: the PNG and a WebP thumbnail at keys derived from the job.

    users/{user_id}/images/{job_id}-{index}.png
    users/{user_id}/thumbnails/{job_id}-{index}.webp

Every attempt of a job writes the same keys, so a re-run overwrites instead of leaving
orphans. S3 trouble is retried at two levels: botocore retries each request a few times
(standard mode, jittered), and each object's PUT is retried with full-jitter exponential
backoff until the upload's deadline. Past it, or on an error no retry can fix (an unknown
bucket, refused credentials), the upload fails as ``storage_unavailable``: a platform failure,
so the job is retried on a new attempt and, when every attempt fails, its hold is voided.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError
from PIL import Image
from prometheus_client import Counter

from infra import s3
from infra.messages import FinishedImage
from infra.settings import Settings

log = structlog.get_logger("gpu_consumer.outputs")

THUMBNAIL_MAX_PX = 256
# The reason code of a job whose images could not be stored (the start of its failure reason).
STORAGE_UNAVAILABLE = "storage_unavailable"
# Server-side answers that a later try can get past; any other 4xx will not change.
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
)

PUTS = Counter(
    "pinksea_gpu_s3_puts_total",
    "Image and thumbnail PUT calls (each up to s3_max_attempts HTTP requests)",
    ["result"],
)
PUT_REQUESTS = Counter(
    "pinksea_gpu_s3_put_requests_total", "HTTP requests of those calls, botocore's retries included"
)


class UploadFailed(Exception):
    pass


def s3_client(
    settings: Settings,
    *,
    max_attempts: int = 1,
    connect_timeout_s: float = 5,
    read_timeout_s: float = 30,
    max_pool_connections: int = 16,
) -> Any:
    """An S3 client for the configured endpoint. ``max_attempts`` counts the first request
    (botocore's ``total_max_attempts``; its ``max_attempts`` would count retries only), so the
    default 1 does not retry: callers that retry on their own decide what a failure means."""
    return s3.s3_client(
        settings,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout_s,  # botocore's names
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
    )


def is_transient(exc: BaseException) -> bool:
    """Could the same request succeed later? (S3 unreachable, timing out, or 5xx/throttling.)"""
    if isinstance(exc, S3ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES
    return False


@dataclass
class UploadStats:
    """What a store's PUTs did (Prometheus has the same per process; tests read these)."""

    calls: int = 0  # put_object calls
    failed_calls: int = 0
    requests: int = 0  # HTTP requests its client sent for them, botocore's retries included
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:  # uploads run in several threads
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


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
        deadline_s: float = 60.0,
        backoff_s: float = 0.2,
        backoff_max_s: float = 8.0,
        thumbnail_max_px: int = THUMBNAIL_MAX_PX,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.thumbnail_max_px = thumbnail_max_px
        self.stats = UploadStats()
        # Counts every HTTP request, so botocore's own retries show too (returns None: a
        # handler's return value would replace the response).
        client.meta.events.register("before-send.s3.PutObject", self._count_request)

    def _count_request(self, **_: Any) -> None:
        self.stats.add(requests=1)
        PUT_REQUESTS.inc()

    def save(
        self, user_id: str, job_id: UUID, images: Sequence[Image.Image]
    ) -> list[FinishedImage]:
        """Encode and upload every image and its thumbnail (in parallel); their records in
        order. Raises UploadFailed if any object could not be stored by the deadline."""
        if not images:
            return []
        deadline_s = time.monotonic() + self.deadline_s  # one for the whole job, not per object
        gave_up = threading.Event()

        def save_one(index: int, image: Image.Image) -> FinishedImage:
            return self._save_one(user_id, job_id, index, image, deadline_s, gave_up)

        with ThreadPoolExecutor(max_workers=min(8, len(images))) as pool:
            return list(pool.map(save_one, range(len(images)), images))

    def _save_one(
        self,
        user_id: str,
        job_id: UUID,
        index: int,
        image: Image.Image,
        deadline_s: float,  # monotonic
        gave_up: threading.Event,
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
            sha256=hashlib.sha256(png).hexdigest(),
        )
        self._put(record.key, png, "image/png", deadline_s, gave_up)
        thumbnail = encode_thumbnail(image, self.thumbnail_max_px)
        self._put(record.thumbnail_key, thumbnail, "image/webp", deadline_s, gave_up)
        return record

    def _put(
        self, key: str, body: bytes, content_type: str, deadline_s: float, gave_up: threading.Event
    ) -> None:
        """Retry until stored, or until the deadline (checked between calls: one call adds at
        most its own timeouts and botocore's retries), or until another object gave up."""
        began_s, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                )
                self.stats.add(calls=1)
                PUTS.labels("ok").inc()
                return
            except (BotoCoreError, ClientError) as e:
                self.stats.add(calls=1, failed_calls=1)
                PUTS.labels("error").inc()
                error = e
            # Full jitter: the workers that lost S3 together do not retry in lockstep.
            ceiling_s = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
            delay_s = random.uniform(0, ceiling_s)
            if is_transient(error) and time.monotonic() + delay_s < deadline_s:
                log.warning(
                    "upload retry", key=key, attempt=attempt, delay_s=delay_s, error=str(error)
                )
                # Sleeps the delay, but wakes at once when another object of the job gave up.
                if not gave_up.wait(delay_s):
                    continue
            gave_up.set()  # the job fails anyway: its other objects stop retrying
            spent_s = time.monotonic() - began_s
            raise UploadFailed(
                f"s3://{self.bucket}/{key}: {error} ({attempt} calls in {spent_s:.1f} s)"
            ) from error

"""Did every image survive? After the storm, each image the read model lists (a completed job's
PNG and its thumbnail) must be in the bucket, the PNG at the size the worker reported, including
those uploaded before the S3 server was killed with SIGKILL: SeaweedFS keeps objects on disk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from botocore.exceptions import ClientError

from infra.health import s3_client
from infra.settings import Settings

IMAGES_MAX = 100_000  # far above a full run's (2000 jobs); a bound on the walk, not a sample


@dataclass
class ImageCheck:
    checked: int = 0  # images (each a PNG and a thumbnail)
    before_s3_kill: int = 0  # of those, stored before S3 was killed with SIGKILL
    missing: list[str] = field(default_factory=list)


def _head(s3: Any, bucket: str, key: str) -> int | None:
    """The object's size, or None when the bucket does not have it."""
    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _check(
    s3: Any, bucket: str, rows: list[asyncpg.Record], s3_kill: datetime | None
) -> ImageCheck:
    out = ImageCheck()
    for r in rows:
        out.checked += 1
        if s3_kill is not None and r["created_at"] < s3_kill:
            out.before_s3_kill += 1
        size = _head(s3, bucket, r["key"])
        if size != r["size_bytes"]:
            out.missing.append(f"{r['key']}: {size} bytes in S3, {r['size_bytes']} reported")
        if _head(s3, bucket, r["thumbnail_key"]) is None:
            out.missing.append(f"{r['thumbnail_key']}: not in S3")
    return out


async def check_images(
    settings: Settings, pool: asyncpg.Pool, s3_killed_at: datetime | None
) -> ImageCheck:
    rows = await pool.fetch(
        "SELECT key, thumbnail_key, size_bytes, created_at FROM images "
        "WHERE deleted_at IS NULL ORDER BY position LIMIT $1",
        IMAGES_MAX + 1,
    )
    assert len(rows) <= IMAGES_MAX, f"more than {IMAGES_MAX} images: raise the bound"
    s3 = s3_client(settings)  # botocore's retries: S3 is back, but its first answers may lag
    return await asyncio.to_thread(_check, s3, settings.s3_bucket, rows, s3_killed_at)

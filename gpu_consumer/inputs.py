"""A job's input images (init image, mask) from S3, read before the run: never billed.

The worker reads only under the job's own user (``users/{user_id}/...``), whatever a dispatch
names: an upload id resolves to ``users/{user_id}/uploads/{id}.<ext>`` (one listing finds its
extension), an image name to ``users/{user_id}/images/{name}.png``. The API checked at
submission that both are the user's and usable; one deleted since is the user's doing (a user
fault, not retried), while S3 trouble is the platform's (retried). Each image is resized to
the job's size here, before the metered run.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image, UnidentifiedImageError

from domain.parameters import is_upload_ref
from gpu_consumer.outputs import image_key
from infra.messages import Dispatch

# Uploads are capped by the plan (a few MiB) and outputs are PNGs of at most 4096 px a side;
# an object larger than this is not one the service wrote or accepted.
INPUT_BYTES_MAX = 128 * 1024**2
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class InputMissing(Exception):
    """An input image the job names is gone or unreadable: the user's, never retried."""


@dataclass(frozen=True)
class RunInputs:
    image: Image.Image | None = None  # RGB, the job's width x height
    mask: Image.Image | None = None  # L (white is repainted), the job's width x height
    read_ms: int = 0  # time spent reading and decoding them (not billed)


def read_inputs(client: Any, bucket: str, dispatch: Dispatch) -> RunInputs:
    params = dispatch.parameters
    if params.init_image is None:
        return RunInputs()
    began = time.perf_counter_ns()
    size = (params.width, params.height)
    image = _read(client, bucket, dispatch.user_id, params.init_image).convert("RGB")
    mask = None
    if params.mask is not None:
        mask = _read(client, bucket, dispatch.user_id, params.mask).convert("L").resize(size)
    read_ms = (time.perf_counter_ns() - began) // 1_000_000
    return RunInputs(image.resize(size), mask, read_ms)


def input_key(client: Any, bucket: str, user_id: str, ref: str) -> str:
    if not is_upload_ref(ref):
        return image_key(user_id, ref)
    prefix = f"users/{user_id}/uploads/{ref}."
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=2)
    keys = [entry["Key"] for entry in listing.get("Contents", [])]
    if len(keys) != 1:
        raise InputMissing(f"upload {ref} is not in storage (deleted after the job was sent?)")
    return str(keys[0])


def _read(client: Any, bucket: str, user_id: str, ref: str) -> Image.Image:
    key = input_key(client, bucket, user_id, ref)
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in _MISSING_CODES:
            raise InputMissing(f"input image {ref} is not in storage") from None
        raise
    body = answer["Body"]
    try:
        if int(answer.get("ContentLength", 0)) > INPUT_BYTES_MAX:
            raise InputMissing(f"input image {ref} is larger than {INPUT_BYTES_MAX} bytes")
        data = body.read(INPUT_BYTES_MAX + 1)
    finally:
        body.close()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputMissing(f"input image {ref} cannot be decoded: {e}") from None
    return image

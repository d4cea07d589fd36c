"""Upload: one input image a user sends for image-to-image or inpainting, from the presigned
POST to its verdict.

The API hands out a presigned POST (``Requested``: the key and the most bytes the plan allows),
the client sends the file straight to S3, and completing the upload has the API read the
object back and describe what it found (``ImageFacts``: the format read from the bytes, the
decoded size, or why it would not decode). The rules of what is accepted live here: the format
must be the declared one (a client's content type is never trusted, only checked against the
bytes), the sides within bounds, the size within the plan's limit. The verdict is an event,
``Completed`` (the upload counts in the storage quota from then on) or ``Rejected`` (the API
deletes the object); ``Deleted`` ends either. Another user's upload is as unknown as a missing
one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import IdempotencyConflict, InvalidTransition, NotFound
from domain.ids import PINKSEA_NAMESPACE
from domain.units import require_aware

# Declared content type -> (the format Pillow reads from the bytes, the key's extension).
CONTENT_TYPES: dict[str, tuple[str, str]] = {
    "image/png": ("PNG", "png"),
    "image/jpeg": ("JPEG", "jpg"),
    "image/webp": ("WEBP", "webp"),
}
SIDE_PX_MIN = 8  # the smallest latent a VAE with SD's 8x downscale can encode is one pixel
SIDE_PX_MAX = 4096
# The decoding cap: an image declaring more pixels is never decoded (a decompression bomb
# declares a huge canvas in a few kilobytes). 4096 x 4096 RGBA is 64 MiB decoded.
PIXELS_MAX = SIDE_PX_MAX * SIDE_PX_MAX


class UploadStatus(StrEnum):
    PENDING = "pending"  # the presigned POST was handed out
    COMPLETED = "completed"
    REJECTED = "rejected"


def upload_id(user_id: str, request_key: str) -> UUID:
    """The upload's id from the user and the request's key (its Idempotency-Key, or a fresh
    random one): the same request again finds the same upload."""
    return uuid5(PINKSEA_NAMESPACE, "\x1f".join(("upload", user_id, request_key)))


def upload_key(user_id: str, upload_uuid: UUID, content_type: str) -> str:
    return f"users/{user_id}/uploads/{upload_uuid}.{CONTENT_TYPES[content_type][1]}"


@dataclass(frozen=True)
class ImageFacts:
    """What the API found in the uploaded object: ``problem`` when it is no image it can
    decode (not an image, truncated, too many pixels to decode), else its format and size."""

    size_bytes: int
    format: str | None = None  # Pillow's name, from the bytes: PNG, JPEG, WEBP, GIF, ...
    width: int = 0
    height: int = 0
    problem: str | None = None


class Upload(Aggregate):
    TOPIC = "pinksea:Upload"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Requested.
        TOPIC = "pinksea:Upload.Created"

    class Requested(Aggregate.Created):
        TOPIC = "pinksea:Upload.Requested"
        user_id: str
        request_key: str  # the Idempotency-Key, or a random one: the id derives from it
        key: str
        content_type: str
        size_bytes_max: int

    class Completed(Aggregate.Event):
        TOPIC = "pinksea:Upload.Completed"
        format: str
        width: int
        height: int
        size_bytes: int

    class Rejected(Aggregate.Event):
        TOPIC = "pinksea:Upload.Rejected"
        reason: str

    class Deleted(Aggregate.Event):
        TOPIC = "pinksea:Upload.Deleted"
        key: str  # the object to remove (the API deletes it; a sweeper can find it here)

    @staticmethod
    def create_id(user_id: str, request_key: str) -> UUID:
        return upload_id(user_id, request_key)

    @event(Requested)
    def __init__(
        self,
        user_id: str,
        request_key: str,
        key: str,
        content_type: str,
        size_bytes_max: int,
        timestamp: datetime,
    ) -> None:
        self.user_id = user_id
        self.request_key = request_key
        self.key = key
        self.content_type = content_type
        self.size_bytes_max = size_bytes_max
        self.requested_at = timestamp
        self.status = UploadStatus.PENDING.value
        self.format: str | None = None
        self.width = 0
        self.height = 0
        self.size_bytes = 0
        self.rejection: str | None = None
        self.deleted = False

    @classmethod
    def request(
        cls,
        *,
        user_id: str,
        request_key: str,
        content_type: str,
        size_bytes_max: int,
        at: datetime,
    ) -> Upload:
        require_aware(at)
        if content_type not in CONTENT_TYPES:
            raise InvalidTransition(f"content type {content_type!r} is not an accepted image")
        assert size_bytes_max > 0, "a plan's upload limit is positive"
        return cls(
            user_id=user_id,
            request_key=request_key,
            key=upload_key(user_id, upload_id(user_id, request_key), content_type),
            content_type=content_type,
            size_bytes_max=size_bytes_max,
            timestamp=at,
        )

    # ----------------------------------------------------------------------------- queries

    def ensure_owner(self, user_id: str) -> None:
        if user_id != self.user_id or self.deleted:
            raise NotFound(f"no upload {self.id}")

    def ensure_same_request(self, content_type: str) -> None:
        if content_type != self.content_type:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for an upload of another content type; use a new key"
            )

    @property
    def usable(self) -> bool:
        """Whether a job may name it as an input image."""
        return self.status == UploadStatus.COMPLETED.value and not self.deleted

    def verdict(self, facts: ImageFacts) -> str | None:
        """Why the object described by ``facts`` is refused, or None when it is accepted."""
        expected = CONTENT_TYPES[self.content_type][0]
        if facts.problem is not None:
            return facts.problem
        if facts.size_bytes > self.size_bytes_max:
            return f"the file has {facts.size_bytes} bytes; your plan allows {self.size_bytes_max}"
        if facts.format != expected:
            return f"the file is {facts.format or 'no known image format'}, not {self.content_type}"
        for name, px in (("width", facts.width), ("height", facts.height)):
            if not SIDE_PX_MIN <= px <= SIDE_PX_MAX:
                return f"its {name} is {px} px; send {SIDE_PX_MIN} to {SIDE_PX_MAX} px"
        return None

    # ---------------------------------------------------------------------------- commands

    def complete(self, facts: ImageFacts, at: datetime) -> bool:
        """Accept or reject the uploaded object; False when the verdict was recorded before."""
        require_aware(at)
        if self.deleted:
            raise NotFound(f"no upload {self.id}")
        if self.status != UploadStatus.PENDING.value:
            return False
        reason = self.verdict(facts)
        if reason is not None:
            self._rejected(reason=reason, timestamp=at)
            return True
        assert facts.format is not None and facts.size_bytes > 0
        self._completed(
            format=facts.format,
            width=facts.width,
            height=facts.height,
            size_bytes=facts.size_bytes,
            timestamp=at,
        )
        return True

    def delete(self, at: datetime) -> bool:
        """False when it was deleted before (a repeat changes nothing)."""
        require_aware(at)
        if self.deleted:
            return False
        self._deleted(key=self.key, timestamp=at)
        return True

    # ------------------------------------------------------------- event bodies (mutate only)

    @event(Completed)
    def _completed(
        self, format: str, width: int, height: int, size_bytes: int, timestamp: datetime
    ) -> None:
        self.status = UploadStatus.COMPLETED.value
        self.format = format
        self.width = width
        self.height = height
        self.size_bytes = size_bytes

    @event(Rejected)
    def _rejected(self, reason: str, timestamp: datetime) -> None:
        self.status = UploadStatus.REJECTED.value
        self.rejection = reason

    @event(Deleted)
    def _deleted(self, key: str, timestamp: datetime) -> None:
        self.deleted = True

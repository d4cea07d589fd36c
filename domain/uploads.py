"""Upload: one input image a user sends for image-to-image or inpainting, from the presigned
POST to its verdict.

A verified object (domain/verified_objects.py has the flow): the API hands out a presigned
POST (``Requested``: the key ``users/{user_id}/uploads/{upload_id}.<ext>``, the declared
content type and the plan's ``upload_bytes_max``), and completing the upload has the API
describe what it read back (``ImageFacts``: the format read from the bytes, the decoded size,
or why it would not decode). The rules of what is accepted live here: the format must be the
declared one (a client's content type is never trusted, only checked against the bytes), the
sides within bounds. ``Completed`` is its accepted verdict. ``Requested`` also records the
upload's ``purpose`` (an image to start from, or an inpainting mask), which is the category
the gallery lists it under (InvokeAI's: ``user`` or ``mask``).

A completed upload is one of its user's images (the gallery lists it, named by its id), so
its owner flags it as a job's images are flagged (the one rule: domain/job_images.py's
:func:`~domain.job_images.record_flags`), one event per change (``Starred``/``Unstarred``,
``MarkedIntermediate``/``UnmarkedIntermediate``), and files it on a board: ``Filed`` records
the board, as a job records its image's (``GenerationJob.ImageFiled``), so that every filing
writes the upload and two concurrent filings conflict (domain/commands/boards.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import IdempotencyConflict, InvalidTransition, NotFound
from domain.job_events import UPLOADED_IMAGE_CATEGORY, ImageCategory
from domain.job_images import ImageFlags, record_flags
from domain.units import require_aware
from domain.verified_objects import PENDING, REJECTED, VerifiedObject, object_id

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


class UploadPurpose(StrEnum):
    """What the user sends the image for."""

    INIT = "init"  # an image to start from (image-to-image, the image inpainting paints on)
    MASK = "mask"  # an inpainting mask


# The category the gallery lists a completed upload under, by its purpose (InvokeAI's).
UPLOAD_CATEGORIES: dict[UploadPurpose, ImageCategory] = {
    UploadPurpose.INIT: UPLOADED_IMAGE_CATEGORY,
    UploadPurpose.MASK: ImageCategory.MASK,
}


class UploadStatus(StrEnum):
    PENDING = PENDING  # the presigned POST was handed out
    COMPLETED = "completed"
    REJECTED = REJECTED


def upload_id(user_id: str, request_key: str) -> UUID:
    """The upload's id from the user and the request's key: the same request again finds the
    same upload."""
    return object_id("upload", user_id, request_key)


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


class Upload(VerifiedObject[ImageFacts]):
    TOPIC = "pinksea:Upload"
    NOUN = "upload"
    ACCEPTED = UploadStatus.COMPLETED.value

    @staticmethod
    def create_id(user_id: str, request_key: str) -> UUID:
        return upload_id(user_id, request_key)

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
        purpose: str = UploadPurpose.INIT.value  # the uploads requested before it: init images

    class Completed(Aggregate.Event):
        TOPIC = "pinksea:Upload.Completed"
        format: str
        width: int
        height: int
        size_bytes: int

    class Rejected(VerifiedObject.Rejected):
        TOPIC = "pinksea:Upload.Rejected"

    class Deleted(VerifiedObject.Deleted):
        TOPIC = "pinksea:Upload.Deleted"

    class Starred(Aggregate.Event):
        """The owner starred the upload's image (InvokeAI's ``starred``)."""

        TOPIC = "pinksea:Upload.Starred"

    class Unstarred(Aggregate.Event):
        """The owner took the star off the upload's image."""

        TOPIC = "pinksea:Upload.Unstarred"

    class MarkedIntermediate(Aggregate.Event):
        """The owner marked the upload's image intermediate: image lists leave it out unless
        asked for intermediates."""

        TOPIC = "pinksea:Upload.MarkedIntermediate"

    class UnmarkedIntermediate(Aggregate.Event):
        """The owner made the upload's intermediate image a result again."""

        TOPIC = "pinksea:Upload.UnmarkedIntermediate"

    class Filed(Aggregate.Event):
        """The owner put the upload's image on a board (domain/boards.py): the upload keeps
        the board's id so that two boards never both take it (each filing writes it)."""

        TOPIC = "pinksea:Upload.Filed"
        board_id: str

    @event(Requested)
    def __init__(
        self,
        user_id: str,
        request_key: str,
        key: str,
        content_type: str,
        size_bytes_max: int,
        timestamp: datetime,
        purpose: str = UploadPurpose.INIT.value,
    ) -> None:
        self._requested(user_id, request_key, key, size_bytes_max, timestamp)
        self.content_type = content_type
        self.purpose = purpose
        self.format: str | None = None
        self.width = 0
        self.height = 0
        self.size_bytes = 0
        self.starred = False
        self.is_intermediate = False
        self.board_id: str | None = None  # the board it was last filed on (which may not hold it)

    @classmethod
    def request(
        cls,
        *,
        user_id: str,
        request_key: str,
        content_type: str,
        size_bytes_max: int,
        at: datetime,
        purpose: UploadPurpose = UploadPurpose.INIT,
    ) -> Upload:
        require_aware(at)
        if content_type not in CONTENT_TYPES:
            raise InvalidTransition(f"content type {content_type!r} is not an accepted image")
        return cls(
            user_id=user_id,
            request_key=request_key,
            key=upload_key(user_id, upload_id(user_id, request_key), content_type),
            content_type=content_type,
            size_bytes_max=size_bytes_max,
            timestamp=at,
            purpose=UploadPurpose(purpose).value,
        )

    # ----------------------------------------------------------------------------- queries

    def ensure_same_request(
        self, content_type: str, purpose: UploadPurpose = UploadPurpose.INIT
    ) -> None:
        if content_type != self.content_type:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for an upload of another content type; use a new key"
            )
        if purpose.value != self.purpose:
            raise IdempotencyConflict(
                f"this Idempotency-Key was used for an upload with purpose {self.purpose!r}; "
                "use a new key"
            )

    @property
    def category(self) -> ImageCategory:
        """What the gallery lists it as (by its purpose)."""
        return UPLOAD_CATEGORIES[UploadPurpose(self.purpose)]

    def refusal(self, facts: ImageFacts) -> str | None:
        """The format must be the declared one (read from the bytes), the sides in bounds."""
        if facts.format != CONTENT_TYPES[self.content_type][0]:
            return f"the file is {facts.format or 'no known image format'}, not {self.content_type}"
        for name, px in (("width", facts.width), ("height", facts.height)):
            if not SIDE_PX_MIN <= px <= SIDE_PX_MAX:
                return f"its {name} is {px} px; send {SIDE_PX_MIN} to {SIDE_PX_MAX} px"
        return None

    @property
    def image_name(self) -> str:
        """Its name in the gallery (and as a job's ``init_image`` or ``mask``): its id."""
        return str(self.id)

    @property
    def flags(self) -> ImageFlags:
        return ImageFlags(starred=self.starred, is_intermediate=self.is_intermediate)

    def ensure_image(self) -> None:
        """Only a completed upload that is not deleted is an image: else NotFound, as an
        unknown image is."""
        if not self.usable:
            raise NotFound(f"upload {self.id} is no image of yours (it is {self.status})")

    # ------------------------------------------------------------------- the owner's word

    def flag(
        self, *, starred: bool | None = None, is_intermediate: bool | None = None, at: datetime
    ) -> bool:
        """The owner stars or unstars its image, or marks it intermediate or not (None: that
        flag stays). Each change is its own event; False when both flags were as asked."""
        require_aware(at)
        self.ensure_image()
        changed = record_flags(
            self.flags,
            starred=starred,
            is_intermediate=is_intermediate,
            star=lambda on: (self._starred if on else self._unstarred)(timestamp=at),
            mark=lambda on: (self._marked_intermediate if on else self._unmarked)(timestamp=at),
        )
        assert starred is None or starred == self.starred
        assert is_intermediate is None or is_intermediate == self.is_intermediate
        return changed

    def file(self, *, board_id: UUID, at: datetime) -> bool:
        """Record the board its image is on; False when it was filed there already."""
        require_aware(at)
        self.ensure_image()
        if self.board_id == str(board_id):
            return False
        self._filed(board_id=str(board_id), timestamp=at)
        return True

    # ------------------------------------------------------------------ the accepted event

    def _accept(self, facts: ImageFacts, at: datetime) -> None:
        assert facts.format is not None
        self._completed(
            format=facts.format,
            width=facts.width,
            height=facts.height,
            size_bytes=facts.size_bytes,
            timestamp=at,
        )

    @event(Completed)
    def _completed(
        self, format: str, width: int, height: int, size_bytes: int, timestamp: datetime
    ) -> None:
        self.status = UploadStatus.COMPLETED.value
        self.format = format
        self.width = width
        self.height = height
        self.size_bytes = size_bytes

    # ---------------------------------------------------- the owner's events (mutate only)

    @event(Starred)
    def _starred(self, timestamp: datetime) -> None:
        self.starred = True

    @event(Unstarred)
    def _unstarred(self, timestamp: datetime) -> None:
        self.starred = False

    @event(MarkedIntermediate)
    def _marked_intermediate(self, timestamp: datetime) -> None:
        self.is_intermediate = True

    @event(UnmarkedIntermediate)
    def _unmarked(self, timestamp: datetime) -> None:
        self.is_intermediate = False

    @event(Filed)
    def _filed(self, board_id: str, timestamp: datetime) -> None:
        self.board_id = board_id

"""Board: a user's named collection of images (InvokeAI's boards).

An image is on at most one board. The board lists its images; the image's job remembers the
board it was last filed on (``GenerationJob.ImageFiled``), so that every addition writes the
job and two additions of one image to two boards conflict and are retried one after the other
(domain/commands/boards.py moves the image off its old board). A board holds at most
``BOARD_IMAGES_MAX`` images. Deleting a board leaves its images, uncategorised: a deleted
board lists nothing, and a job's pointer to it means no board.

A board's name is what a person wrote: personal data, sealed under the user's data key like a
job's prompts (domain/personal_data.py). ``Opened`` and ``Renamed`` record the sealed name and
its keyed digest, which is what a repeated create or rename is compared with; the plaintext
never enters the store, so the user's erasure (destroying the key) makes every name of theirs
read "[erased]". Boards recorded before sealing hold a plaintext name and no digest: they are
compared and read as they were stored.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import InvalidTransition, NotFound
from domain.personal_data import DIGEST_PREFIX, Sealer, is_sealed
from domain.units import require_aware

BOARD_IMAGES_MAX = 1000  # a bound on one aggregate's list (and on a board's page of images)
BOARD_NAME_CHARS_MAX = 300
BOARD_NAME_FIELD = "board_name"  # the field a name is sealed and digested as (the key's AAD)


class Board(Aggregate):
    TOPIC = "pinksea:Board"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Opened.
        TOPIC = "pinksea:Board.Created"

    class Opened(Aggregate.Created):
        TOPIC = "pinksea:Board.Opened"
        user_id: str
        request_key: str  # the Idempotency-Key, or a random one: the id derives from it
        name: str  # sealed (plaintext in the boards recorded before sealing)
        name_digest: str | None = None  # the name's keyed digest; None: plaintext name

    class Renamed(Aggregate.Event):
        TOPIC = "pinksea:Board.Renamed"
        name: str  # sealed (plaintext in the boards recorded before sealing)
        name_digest: str | None = None  # the name's keyed digest; None: plaintext name

    class ImageAdded(Aggregate.Event):
        TOPIC = "pinksea:Board.ImageAdded"
        image_name: str

    class ImageRemoved(Aggregate.Event):
        TOPIC = "pinksea:Board.ImageRemoved"
        image_name: str

    class Deleted(Aggregate.Event):
        TOPIC = "pinksea:Board.Deleted"

    @staticmethod
    def create_id(user_id: str, request_key: str) -> UUID:
        return ids.board_id(user_id, request_key)

    @event(Opened)
    def __init__(
        self,
        user_id: str,
        request_key: str,
        name: str,
        timestamp: datetime,
        name_digest: str | None = None,
    ) -> None:
        self.user_id = user_id
        self.request_key = request_key
        self.name = name  # as stored: sealed, or plaintext from before sealing
        self.name_digest = name_digest
        # What a repeated create is compared with, after renames too.
        self.created_name = name
        self.created_digest = name_digest
        self.created_at = timestamp
        self.images: list[str] = []  # image names, in the order they were added
        self.deleted = False

    @classmethod
    def create(
        cls,
        *,
        user_id: str,
        request_key: str,
        name: str,
        at: datetime,
        sealer: Sealer | None = None,
    ) -> Board:
        """``sealer``: the user's data key, which seals the name the event records; None only
        for tools and tests that keep plaintext."""
        require_aware(at)
        name = _valid(name)
        return cls(
            user_id=user_id,
            request_key=request_key,
            name=_stored(name, sealer),
            name_digest=_digest(name, sealer),
            timestamp=at,
        )

    # ----------------------------------------------------------------------------- queries

    def ensure_owner(self, user_id: str) -> None:
        if user_id != self.user_id or self.deleted:
            raise NotFound(f"no board {self.id}")

    def holds(self, image_name: str) -> bool:
        return not self.deleted and image_name in self.images

    def was_created_as(self, name: str, sealer: Sealer | None = None) -> bool:
        """Whether a create of ``name`` repeats the one that opened this board (``sealer``:
        the user's key, which a sealed board's digest is compared under)."""
        return _same(name.strip(), self.created_name, self.created_digest, sealer)

    # ---------------------------------------------------------------------------- commands

    def rename(self, name: str, at: datetime, sealer: Sealer | None = None) -> bool:
        """False when the board has that name already (``sealer``: the user's key, which
        seals the new name and compares it with a sealed one)."""
        require_aware(at)
        name = _valid(name)
        if _same(name, self.name, self.name_digest, sealer):
            return False
        self._renamed(name=_stored(name, sealer), name_digest=_digest(name, sealer), timestamp=at)
        return True

    def add_image(self, image_name: str, at: datetime) -> bool:
        """False when the board holds it already."""
        require_aware(at)
        if image_name in self.images:
            return False
        if len(self.images) >= BOARD_IMAGES_MAX:
            raise InvalidTransition(
                f"the board holds {BOARD_IMAGES_MAX} images, its most; use another board"
            )
        self._image_added(image_name=image_name, timestamp=at)
        return True

    def remove_image(self, image_name: str, at: datetime) -> None:
        require_aware(at)
        if image_name not in self.images:
            raise NotFound(f"board {self.id} has no image {image_name!r}")
        self._image_removed(image_name=image_name, timestamp=at)

    def delete(self, at: datetime) -> None:
        require_aware(at)
        self._deleted(timestamp=at)

    # ------------------------------------------------------------- event bodies (mutate only)

    @event(Renamed)
    def _renamed(self, name: str, timestamp: datetime, name_digest: str | None = None) -> None:
        self.name = name
        self.name_digest = name_digest

    @event(ImageAdded)
    def _image_added(self, image_name: str, timestamp: datetime) -> None:
        self.images.append(image_name)

    @event(ImageRemoved)
    def _image_removed(self, image_name: str, timestamp: datetime) -> None:
        self.images.remove(image_name)

    @event(Deleted)
    def _deleted(self, timestamp: datetime) -> None:
        self.deleted = True
        self.images = []  # back to uncategorised: a deleted board holds nothing


def _valid(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= BOARD_NAME_CHARS_MAX:
        raise InvalidTransition(f"a board's name has 1 to {BOARD_NAME_CHARS_MAX} characters")
    return name


def _stored(name: str, sealer: Sealer | None) -> str:
    """The name as an event records it: sealed under the user's key (plaintext without one)."""
    return name if sealer is None else sealer.seal(BOARD_NAME_FIELD, name)


def _digest(name: str, sealer: Sealer | None) -> str | None:
    return None if sealer is None else DIGEST_PREFIX + sealer.digest(BOARD_NAME_FIELD, name)


def _same(name: str, stored: str, digest: str | None, sealer: Sealer | None) -> bool:
    """Whether the plaintext ``name`` is the one recorded as ``stored`` (with ``digest``).
    A sealed name is compared by its keyed digest: without the key that made it (none given,
    or the user's erasure destroyed it) no name is the same."""
    if digest is not None:
        return _digest(name, sealer) == digest
    assert not is_sealed(stored), "a sealed name is recorded with its digest"
    return stored == name

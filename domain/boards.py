"""Board: a user's named collection of images (InvokeAI's boards).

An image is on at most one board. The board lists its images; the image's job remembers the
board it was last filed on (``GenerationJob.ImageFiled``), so that every addition writes the
job and two additions of one image to two boards conflict and are retried one after the other
(domain/commands/boards.py moves the image off its old board). A board holds at most
``BOARD_IMAGES_MAX`` images. Deleting a board leaves its images, uncategorised: a deleted
board lists nothing, and a job's pointer to it means no board.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import InvalidTransition, NotFound
from domain.units import require_aware

BOARD_IMAGES_MAX = 1000  # a bound on one aggregate's list (and on a board's page of images)
BOARD_NAME_CHARS_MAX = 300


class Board(Aggregate):
    TOPIC = "pinksea:Board"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Opened.
        TOPIC = "pinksea:Board.Created"

    class Opened(Aggregate.Created):
        TOPIC = "pinksea:Board.Opened"
        user_id: str
        request_key: str  # the Idempotency-Key, or a random one: the id derives from it
        name: str

    class Renamed(Aggregate.Event):
        TOPIC = "pinksea:Board.Renamed"
        name: str

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
    def __init__(self, user_id: str, request_key: str, name: str, timestamp: datetime) -> None:
        self.user_id = user_id
        self.request_key = request_key
        self.name = name
        self.created_name = name  # what a repeated create is compared with, after renames too
        self.created_at = timestamp
        self.images: list[str] = []  # image names, in the order they were added
        self.deleted = False

    @classmethod
    def create(cls, *, user_id: str, request_key: str, name: str, at: datetime) -> Board:
        require_aware(at)
        return cls(user_id=user_id, request_key=request_key, name=_valid(name), timestamp=at)

    # ----------------------------------------------------------------------------- queries

    def ensure_owner(self, user_id: str) -> None:
        if user_id != self.user_id or self.deleted:
            raise NotFound(f"no board {self.id}")

    def holds(self, image_name: str) -> bool:
        return not self.deleted and image_name in self.images

    # ---------------------------------------------------------------------------- commands

    def rename(self, name: str, at: datetime) -> bool:
        require_aware(at)
        name = _valid(name)
        if name == self.name:
            return False
        self._renamed(name=name, timestamp=at)
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
    def _renamed(self, name: str, timestamp: datetime) -> None:
        self.name = name

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

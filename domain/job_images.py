"""The owner's word on a job's images: delete one, star it, mark it intermediate, file it on a
board.

``GenerationJob`` (domain/jobs.py) binds each function as its method of the same name (hence
the first parameter, ``self``). Each validates and then triggers the job's image events
(domain/job_events.py), one per change: a repeat changes nothing and says so (False). An image
that is deleted, another user's or unknown is NotFound, all alike, so the answer tells another
user nothing.

The rule of an image's flags is :func:`record_flags`, the one a job's images and an upload
(domain/uploads.py, the image a user sent) both follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from domain.errors import NotFound
from domain.units import require_aware

if TYPE_CHECKING:
    from domain.jobs import GenerationJob


@dataclass(frozen=True)
class ImageFlags:
    """The owner's flags on one image (InvokeAI's ``starred`` and ``is_intermediate``)."""

    starred: bool
    is_intermediate: bool


def record_flags(
    flags: ImageFlags,
    *,
    starred: bool | None,
    is_intermediate: bool | None,
    star: Callable[[bool], None],
    mark: Callable[[bool], None],
) -> bool:
    """The rule of every image's flags: each flag asked for (None: it stays) that differs
    from ``flags``, the image's now, is one event, which ``star(value)`` or ``mark(value)``
    triggers. False when both were as asked: a repeat records nothing."""
    changed = False
    if starred is not None and starred != flags.starred:
        star(starred)
        changed = True
    if is_intermediate is not None and is_intermediate != flags.is_intermediate:
        mark(is_intermediate)
        changed = True
    return changed


def delete_image(self: GenerationJob, *, name: str, user_id: str, at: datetime) -> bool:
    """The owner deletes one of the job's images. False: it was deleted before, and a
    repeated delete changes nothing. Another user's image is as unknown as a missing one."""
    require_aware(at)
    image = next((i for i in self.images if i["name"] == name), None)
    if image is None or user_id != self.user_id:
        raise NotFound(f"the job has no image {name!r}")
    if name in self.deleted_images:
        return False
    self._image_deleted(
        name=name, key=image["key"], thumbnail_key=image["thumbnail_key"], timestamp=at
    )
    return True


def has_image(self: GenerationJob, name: str, user_id: str) -> bool:
    """Whether ``name`` is one of the job's images, the user's and not deleted."""
    return (
        user_id == self.user_id
        and name not in self.deleted_images
        and any(i["name"] == name for i in self.images)
    )


def file_image(self: GenerationJob, *, name: str, board_id: UUID, at: datetime) -> bool:
    """Record the image's board; False when it was filed there already."""
    require_aware(at)
    assert name in {i["name"] for i in self.images}, "only a produced image is filed"
    if self.image_boards.get(name) == str(board_id):
        return False
    self._image_filed(name=name, board_id=str(board_id), timestamp=at)
    return True


def image_flags(self: GenerationJob, name: str) -> ImageFlags:
    """The owner's flags on the job's image ``name`` now."""
    return ImageFlags(name in self.starred_images, name in self.intermediate_images)


def flag_image(
    self: GenerationJob,
    *,
    name: str,
    user_id: str,
    starred: bool | None = None,
    is_intermediate: bool | None = None,
    at: datetime,
) -> bool:
    """The owner stars or unstars an image, or marks it intermediate or not (None: that
    flag stays). Each change is its own event; False when both flags were as asked. A
    deleted image, another user's or an unknown one is NotFound."""
    require_aware(at)
    if not self.has_image(name, user_id):
        raise NotFound(f"the job has no image {name!r}")
    changed = record_flags(
        self.image_flags(name),
        starred=starred,
        is_intermediate=is_intermediate,
        star=lambda on: (self._image_starred if on else self._image_unstarred)(
            name=name, timestamp=at
        ),
        mark=lambda on: (self._image_marked_intermediate if on else self._image_unmarked)(
            name=name, timestamp=at
        ),
    )
    flags = self.image_flags(name)
    assert starred is None or starred == flags.starred
    assert is_intermediate is None or is_intermediate == flags.is_intermediate
    return changed

"""VerifiedObject: a file a user sends straight to S3 that counts only once the server has read
it back and accepted it; the one shape of an upload (domain/uploads.py) and of a user's model
(domain/user_models.py).

The API hands out a presigned POST (the subclass's ``Requested``: the key and the most bytes
the plan allows, with what the subclass records of the request), the client sends the file to
S3 itself, and completing it has the API read the object back and describe what it found (the
subclass's facts, :class:`ObjectFacts`). The verdict is an event: the subclass's accepted one
(the object counts in the storage quota from then on) or ``Rejected`` (the API deletes the
object); ``Deleted`` ends either. Another user's object is as unknown as a missing one, and a
request's id derives from the user and the request's key, so a repeat finds the same object.

A subclass declares only what differs: its TOPIC and every event class with its explicit
TOPIC (``Rejected`` and ``Deleted`` subclass this module's, which apply them: their fields are
the same for every kind), ``NOUN`` and its ``ACCEPTED`` status, ``create_id``, its
``Requested`` ``__init__`` (which calls :meth:`VerifiedObject._requested`), its checks
(:meth:`VerifiedObject.refusal`) and its accepted event (:meth:`VerifiedObject._accept`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.errors import NotFound
from domain.ids import PINKSEA_NAMESPACE
from domain.units import require_aware

PENDING = "pending"  # the presigned POST was handed out; no verdict yet
REJECTED = "rejected"


class ObjectFacts(Protocol):
    """What the API found in an uploaded object: ``problem`` when it is not the kind of file
    it must be (it would not decode, or parse), else the facts its kind checks."""

    @property
    def size_bytes(self) -> int: ...

    @property
    def problem(self) -> str | None: ...


F = TypeVar("F", bound=ObjectFacts)


def object_id(kind: str, user_id: str, request_key: str) -> UUID:
    """The id of ``kind``'s object from the user and the request's key (its Idempotency-Key,
    or a fresh random one): the same request again finds the same object."""
    return uuid5(PINKSEA_NAMESPACE, "\x1f".join((kind, user_id, request_key)))


class VerifiedObject(Aggregate, Generic[F]):
    NOUN: ClassVar[str]  # what the user calls it: "upload", "model"
    ACCEPTED: ClassVar[str]  # the status of an accepted object

    user_id: str
    request_key: str
    key: str
    size_bytes_max: int
    requested_at: datetime
    status: str
    rejection: str | None
    deleted: bool

    class Rejected(Aggregate.Event):
        reason: str

        def apply(self, aggregate: Any) -> None:
            aggregate.status = REJECTED
            aggregate.rejection = self.reason

    class Deleted(Aggregate.Event):
        key: str  # the object to remove (the API deletes it; a sweeper can find it here)

        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True

    def _requested(
        self, user_id: str, request_key: str, key: str, size_bytes_max: int, timestamp: datetime
    ) -> None:
        """The state every kind's ``Requested`` sets (each subclass's ``__init__`` calls it)."""
        assert size_bytes_max > 0, "a plan's limit on what it may upload is positive"
        self.user_id = user_id
        self.request_key = request_key
        self.key = key
        self.size_bytes_max = size_bytes_max
        self.requested_at = timestamp
        self.status = PENDING
        self.rejection = None
        self.deleted = False

    # ----------------------------------------------------------------------------- queries

    def ensure_owner(self, user_id: str) -> None:
        if user_id != self.user_id or self.deleted:
            raise NotFound(f"no {self.NOUN} {self.id}")

    @property
    def usable(self) -> bool:
        """Whether a job may name it."""
        return self.status == self.ACCEPTED and not self.deleted

    def verdict(self, facts: F) -> str | None:
        """Why the object described by ``facts`` is refused, or None when it is accepted."""
        if facts.size_bytes > self.size_bytes_max:
            return f"the file has {facts.size_bytes} bytes; your plan allows {self.size_bytes_max}"
        if facts.problem is not None:
            return facts.problem
        return self.refusal(facts)

    def refusal(self, facts: F) -> str | None:
        """The kind's own checks of a file of the right size that parsed: why it is refused,
        or None."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- commands

    def complete(self, facts: F, at: datetime) -> bool:
        """Accept or reject the uploaded object; False when the verdict was recorded before."""
        require_aware(at)
        if self.deleted:
            raise NotFound(f"no {self.NOUN} {self.id}")
        if self.status != PENDING:
            return False
        reason = self.verdict(facts)
        if reason is not None:
            self.trigger_event(type(self).Rejected, reason=reason, timestamp=at)
            return True
        assert 0 < facts.size_bytes <= self.size_bytes_max
        self._accept(facts, at)
        assert self.status == self.ACCEPTED
        return True

    def _accept(self, facts: F, at: datetime) -> None:
        """Record the kind's accepted event from ``facts`` (which passed the verdict)."""
        raise NotImplementedError

    def delete(self, at: datetime) -> bool:
        """False when it was deleted before (a repeat changes nothing)."""
        require_aware(at)
        if self.deleted:
            return False
        self.trigger_event(type(self).Deleted, key=self.key, timestamp=at)
        return True

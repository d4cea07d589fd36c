"""The commands every verified object shares (domain/verified_objects.py): request, complete,
delete, each on one aggregate saved alone, and the owner's read of one.

Each kind's own commands (domain/commands/uploads.py, domain/commands/user_models.py) are
these, called with the kind's class, its facts and what it records of a request, and answer
a :class:`VerifiedObjectResult` under the kind's own name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypeVar
from uuid import UUID

from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore
from domain.errors import NotFound
from domain.plans import Plan
from domain.verified_objects import ObjectFacts, VerifiedObject

V = TypeVar("V", bound=VerifiedObject[Any])


@dataclass(frozen=True)
class VerifiedObjectResult(Result):
    object_id: UUID
    key: str
    size_bytes_max: int
    status: str
    rejection: str | None
    changed: bool  # False: a repetition, nothing new recorded

    @classmethod
    def of(cls, obj: VerifiedObject[Any], *, changed: bool) -> Self:
        return cls(
            object_id=obj.id,
            key=obj.key,
            size_bytes_max=obj.size_bytes_max,
            status=obj.status,
            rejection=obj.rejection,
            changed=changed,
        )


class VerifiedObjectCommands(CommandStore):
    """The bodies of the kinds' commands (their ``@command`` methods call these)."""

    def _request_object(
        self,
        kind: type[V],
        user_id: str,
        request_key: str,
        *,
        requested: Callable[[Plan], V],
        ensure_same: Callable[[V], None],
    ) -> tuple[V, bool]:
        """The object ``requested`` makes under the user's plan, saved, and True; the same
        request key again finds it, and False (``ensure_same``: IdempotencyConflict when the
        key asked for another)."""
        existing = self.find(kind.create_id(user_id, request_key))
        if existing is not None:
            assert isinstance(existing, kind)
            existing.ensure_owner(user_id)
            ensure_same(existing)
            return existing, False
        obj = requested(self.subscription(user_id).plan)
        assert obj.id == kind.create_id(user_id, request_key)
        self.save(obj)
        return obj, True

    def _complete_object(
        self, kind: type[V], user_id: str, object_id: UUID, facts: ObjectFacts, at: datetime
    ) -> tuple[V, bool]:
        """Record the verdict on the uploaded object (the kind has the rules); False when it
        was recorded before."""
        obj = self.owned(kind, user_id, object_id)
        changed = obj.complete(facts, at)
        self.save(obj if changed else None)
        return obj, changed

    def _delete_object(
        self, kind: type[VerifiedObject[Any]], user_id: str, object_id: UUID, at: datetime
    ) -> CommandResult:
        """The owner deletes it (its object in S3 is the caller's to remove)."""
        obj = self.owned(kind, user_id, object_id)
        obj.delete(at)
        self.save(obj)
        return CommandResult(True)

    def owned(self, kind: type[V], user_id: str, object_id: UUID) -> V:
        """The user's object; another user's, a deleted one or none at all is NotFound."""
        obj = self.find(object_id)
        if not isinstance(obj, kind):
            raise NotFound(f"no {kind.NOUN} {object_id}")
        obj.ensure_owner(user_id)
        return obj

"""The API of a verified object (domain/verified_objects.py): what the routes of uploads
(api/routers/uploads.py) and of a user's models (api/routers/user_models.py) share.

- :func:`start`: the storage quota (and the kind's plan gate) checked, the request recorded,
  and a presigned POST whose policy fixes the key and bounds the size by the plan
  (``content-length-range``); the client POSTs the file to S3 itself.
- :func:`complete`: the object read back (never more than its limit and one byte) and
  described by the kind's inspector, off the event loop; the domain's verdict recorded; a
  rejected object deleted and answered as an upload-rejected problem (a repeat answers the
  same verdict, and tries the deletion again).
- :func:`delete`: the deletion recorded, then the object removed.
- :func:`owned`: the user's object from the event store (another user's is a 404, as a
  missing one).

A router declares its kind once (:class:`VerifiedObjects`: the aggregate, its path, its facts
and their inspector, its two commands) and keeps its own request body, views and route
metadata (the OpenAPI contract is theirs).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

from botocore.exceptions import ClientError
from fastapi import Response

from api import problems as p
from api.positions import no_content
from api.problems import ProblemError
from api.services import Services, now
from domain.application import PinkseaApplication
from domain.commands.results import CommandResult
from domain.commands.verified_objects import VerifiedObjectResult
from domain.errors import NotFound
from domain.plans import Plan
from domain.verified_objects import PENDING, REJECTED, ObjectFacts, VerifiedObject

V = TypeVar("V", bound=VerifiedObject[Any])
F = TypeVar("F", bound=ObjectFacts)

UPLOAD_URL_TTL_S = 15 * 60  # the presigned POST's lifetime
_MISSING_OBJECT = ("NoSuchKey", "404")  # S3's codes for an object never put


@dataclass(frozen=True)
class VerifiedObjects(Generic[V, F]):
    """One kind of verified object, as its router declares it."""

    kind: type[V]
    path: str  # its collection's route: a ticket's Location is under it, GET lists them
    facts: Callable[..., F]  # the kind's facts; facts(size_bytes=n): an object past the limit
    inspect: Callable[[Any, int], F]  # (the object's body, the most bytes to read) -> facts
    # The commands recording the verdict and the deletion, e.g. PinkseaApplication.complete_upload.
    complete_command: Callable[..., VerifiedObjectResult]
    delete_command: Callable[..., CommandResult]

    @property
    def noun(self) -> str:
        return self.kind.NOUN

    def not_found(self, object_id: UUID) -> ProblemError:
        return ProblemError(
            p.NOT_FOUND, f"You have no {self.noun} {object_id}; list yours with GET {self.path}."
        )


@dataclass(frozen=True)
class Ticket:
    """A recorded request and its presigned POST: what a kind's ticket view reads."""

    object_id: UUID
    key: str
    size_bytes_max: int
    url: str  # POST the file here as multipart/form-data
    fields: dict[str, str]  # the form fields to send first, the file last
    expires_at: datetime
    position: int


async def start(
    svc: Services,
    objects: VerifiedObjects[V, F],
    user_id: str,
    response: Response,
    idempotency_key: str | None,
    request: Callable[[str], VerifiedObjectResult],
    *,
    gate: Callable[[Plan], None] = lambda plan: None,
    content_type: str | None = None,
) -> Ticket:
    """Record the request (``request``, on a command thread, with the request's key) once
    ``gate`` and the storage quota allow it, and hand out its presigned POST (``content_type``:
    fixed by the policy too). Sets the ticket's Location, and Idempotent-Replayed on a replay."""
    used_bytes = await svc.storage_used(user_id)

    def checked_request() -> VerifiedObjectResult:
        plan = svc.application.subscription(user_id).plan
        gate(plan)
        if used_bytes >= plan.storage_bytes:
            raise ProblemError(
                p.STORAGE_QUOTA,
                f"Your images, uploads and models use all {plan.storage_gb} GB of your "
                f"{plan.slug} plan; delete some or upgrade for more storage.",
            )
        return request(idempotency_key or uuid.uuid4().hex)

    result = await svc.command(checked_request)
    fixed = {} if content_type is None else {"Content-Type": content_type}
    expires_at = now().replace(microsecond=0) + timedelta(seconds=UPLOAD_URL_TTL_S)
    post = await svc.blocking(
        svc.s3.generate_presigned_post,
        Bucket=svc.settings.s3_bucket,
        Key=result.key,
        Fields=fixed,
        Conditions=[
            *({name: value} for name, value in fixed.items()),
            ["content-length-range", 1, result.size_bytes_max],
        ],
        ExpiresIn=UPLOAD_URL_TTL_S,
    )
    response.headers["Location"] = f"{objects.path}/{result.object_id}"
    if not result.changed:
        response.headers["Idempotent-Replayed"] = "true"
    return Ticket(
        object_id=result.object_id,
        key=result.key,
        size_bytes_max=result.size_bytes_max,
        url=post["url"],
        fields=post["fields"],
        expires_at=expires_at,
        position=result.position,
    )


async def owned(svc: Services, objects: VerifiedObjects[V, F], user_id: str, object_id: UUID) -> V:
    """The user's object, from the event store (a deletion is seen at once); else a 404."""
    return await svc.command(_owned, svc.application, objects, user_id, object_id)


def _owned(
    app: PinkseaApplication, objects: VerifiedObjects[V, F], user_id: str, object_id: UUID
) -> V:
    try:
        return app.owned(objects.kind, user_id, object_id)
    except NotFound:
        raise objects.not_found(object_id) from None


async def complete(
    svc: Services, objects: VerifiedObjects[V, F], user_id: str, object_id: UUID
) -> tuple[V, int]:
    """The object with its verdict, recorded now from what S3 holds or before, and a store
    position that includes the verdict (the answer's ``position``: X-Min-Position reads the
    storage used with it). A rejection is a 422 upload-rejected problem (the object deleted,
    the position in it too); nothing uploaded yet a 409."""
    obj = await owned(svc, objects, user_id, object_id)
    if obj.status == PENDING:
        facts = await _facts(svc, objects, obj)
        result = await svc.command(
            objects.complete_command, svc.application, user_id, object_id, facts=facts, at=now()
        )
        position = result.position
        obj = await owned(svc, objects, user_id, object_id)
        svc.storage.drop(user_id)
    else:  # recorded before: as a command that records nothing, the newest position
        position = await svc.command(svc.application.current_position)
    assert position > 0, position
    if obj.status == REJECTED:
        # The verdict is recorded first; the object goes after it (idempotent: a repeat tries
        # again, and the event names the key for a sweeper).
        await svc.forget_objects(obj.key)
        extensions: dict[str, Any] = {f"{objects.noun}_id": str(object_id)}  # upload_id, ...
        raise ProblemError(
            p.UPLOAD_REJECTED,
            p.sentence(f"The {objects.noun} was rejected: {obj.rejection}; start a new upload"),
            reason=obj.rejection,
            position=position,
            **extensions,
        )
    return obj, position


async def _facts(svc: Services, objects: VerifiedObjects[V, F], obj: V) -> F:
    """Read the object (never more than its limit and one byte) and describe it, off the
    event loop."""
    try:
        answer = await svc.blocking(svc.s3.get_object, Bucket=svc.settings.s3_bucket, Key=obj.key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in _MISSING_OBJECT:
            raise ProblemError(
                p.INVALID_TRANSITION,
                "Nothing was uploaded yet; POST the file to the presigned URL, then complete.",
            ) from None
        raise
    body = answer["Body"]
    try:
        size_bytes = int(answer.get("ContentLength", 0))
        if size_bytes > obj.size_bytes_max:
            return objects.facts(size_bytes=size_bytes)  # the domain says why; nothing is read
        return await svc.blocking(objects.inspect, body, obj.size_bytes_max)
    finally:
        body.close()


async def delete(
    svc: Services, objects: VerifiedObjects[V, F], user_id: str, object_id: UUID
) -> Response:
    """Record the deletion, then remove the object: a 204 with the deletion's X-Position."""
    obj = await owned(svc, objects, user_id, object_id)
    try:
        result = await svc.command(
            objects.delete_command, svc.application, user_id, object_id, at=now()
        )
    except NotFound:  # deleted meanwhile
        raise objects.not_found(object_id) from None
    await svc.forget_objects(obj.key)
    svc.storage.drop(user_id)
    return no_content(result.position)

"""Erasure of a user's personal data (DELETE /v1/me, and the admin's route): crypto-shredding.

The event store is immutable history and the ledger is replayed from it, so nothing in it is
deleted. What a person wrote was never stored there in plaintext: the prompts and the boards'
names are sealed under the user's data key (domain/personal_data.py, infra/personal_keys.py).
Erasing is therefore, in this order:

1. every unfinished job of theirs cancelled (none runs on a prompt that reads as erased);
2. their data key destroyed, first of all the work, so the erasure takes effect at once: from
   then on every sealed prompt and board name of theirs reads "[erased]", in the API, the read
   models (also rebuilt), the exports and every replay; their jobs stopped again (one
   submitted meanwhile was sealed under the key just destroyed);
3. the e-mail address of their sign-ins forgotten (it is no event: notification_preferences);
4. each of their images, uploads and LoRAs deleted as their own deletes would
   (``ImageDeleted``, ``Upload.Deleted``, ``UserModel.Deleted``: the storage quota and the read
   models follow), at most ``DELETIONS_PER_REQUEST`` of them in one request. They are found in
   the read models, once these have applied everything stored before the erasure (a LoRA
   registered a moment before it is found too); read models that lag behind a short wait
   leave the request incomplete, for a repeat;
5. ``PersonalData.Erased`` recorded: who erased, when, how much went in this request, and
   nothing of what;
6. once no deletion is left, every object under their images, thumbnails, uploads and models
   in S3 removed (also one whose deletion is not yet projected), at most
   ``S3_PAGES_PER_REQUEST`` pages of ``S3_PAGE`` objects in one request.

A request does bounded work, however large the account: when a bound leaves something for
later, its answer says ``complete: false`` (DELETE /v1/me answers 202 with Retry-After) and
the same request repeated goes on where it stopped. Each step is idempotent, so a repeat, or
one after a failure half-way (S3 down: a 503, the key already gone), never erases twice; a
repeat after a complete erasure changes nothing. Events, postings, balances, receipts and the
ledger's seals stay exact: they never held the plaintext.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from api import problems as p
from api.problems import ProblemError
from api.services import Services, now
from domain.commands.results import CommandResult
from domain.errors import NotFound
from domain.user_models import user_models_prefix
from infra import redis_keys
from projections.consistency import first_behind

log = structlog.get_logger("api.erasure")
T = TypeVar("T")

CONCURRENT_DELETES = 8  # deletion commands at once (each on a command thread of the API)
# One request's work, whatever the account holds (a repeat does the rest): deletion commands
# (images, uploads and LoRAs together) and S3 pages. Measured on the 2-vCPU development stack
# (2026-12-01, accounts of 504 and 1000 images): 500 image deletions took 0.5 s, a request
# of 500 deletions and 2000 objects 1.3 s, so one at both bounds takes a few seconds.
DELETIONS_PER_REQUEST = 500
S3_PAGE = 1000  # DeleteObjects takes at most 1000 keys; ListObjectsV2 answers as many
S3_PAGES_PER_REQUEST = 10  # list + delete round trips (10,000 objects)
ERASURE_RETRY_AFTER_S = "1"  # when to repeat a request that left some (the projection's lag)
# Where step 4 finds the user's files (images, uploads, LoRAs), and how long one request waits
# for them to have applied what was stored before it (a repeat waits again).
FILE_PROJECTIONS = ("jobs", "uploads", "user_models")
PROJECTED_WAIT_S = 2.0


@dataclass(frozen=True)
class Erasure:
    """What one erasure request did."""

    changed: bool  # False: nothing was left to erase
    key_destroyed: bool
    cancelled_jobs: int
    images_deleted: int
    uploads_deleted: int
    models_deleted: int
    objects_deleted: int
    position: int
    complete: bool  # False: a bound was reached, the same request again does the rest


@dataclass
class _Budget:
    """The deletion commands one request has left; ``more``: something was left over."""

    left: int
    more: bool = False

    @property
    def limit(self) -> int:
        """The rows to select: those it may delete, and one to tell whether any is left."""
        return self.left + 1

    def take(self, rows: list[T]) -> list[T]:
        """Of ``rows`` (selected with ``limit``), those this request deletes."""
        assert len(rows) <= self.limit
        self.more = self.more or len(rows) > self.left
        taken = rows[: self.left]
        self.left -= len(taken)
        assert self.left >= 0
        return taken


async def erase_personal_data(svc: Services, user_id: str, *, actor: str) -> Erasure:
    """One request's part of the erasure (all of it unless the account is larger than the
    bounds: then ``complete`` is False and a repeat goes on)."""
    app = svc.application
    at = now()
    # Where the user's files are found (step 4) must have applied all that came before this.
    stored = await svc.command(app.current_position)
    jobs = await _stop_jobs(svc, user_id)
    destroyed = await svc.personal_keys.erase(user_id)
    # A job submitted since the first stop was sealed under the key just destroyed: stopped
    # too, so that none runs on a prompt that reads "[erased]".
    jobs += await _stop_jobs(svc, user_id)
    await _forget_addresses(svc, user_id)
    budget = _Budget(DELETIONS_PER_REQUEST)
    # Unprojected files would be missed: the request deletes what is there and stays incomplete.
    budget.more = not await _files_projected(svc, stored)
    images = await _delete_images(svc, user_id, budget)
    uploads = await _delete_uploads(svc, user_id, budget)
    models = await _delete_models(svc, user_id, budget)
    # On record before the objects go: a failure there (a 503) loses nothing of the record.
    recorded = await svc.command(
        app.record_erasure,
        user_id,
        actor=actor,
        key_destroyed=destroyed,
        images=images,
        uploads=uploads,
        models=models,
        at=at,
    )
    objects, objects_left = 0, False
    if not budget.more:  # the objects go after their deletions (a repeat sweeps them)
        objects, objects_left = await _delete_objects(svc, user_id)
    complete = not budget.more and not objects_left
    svc.storage.drop(user_id)
    await svc.balance_cache.delete(user_id)
    for job_id in jobs:
        await svc.job_cache.delete(str(job_id))
    log.info(
        "personal data erased",
        user=user_id,
        actor=actor,
        key_destroyed=destroyed,
        images=images,
        uploads=uploads,
        models=models,
        objects=objects,
        complete=complete,
    )
    return Erasure(
        changed=recorded.changed or bool(jobs) or objects > 0,
        key_destroyed=destroyed,
        cancelled_jobs=len(jobs),
        images_deleted=images,
        uploads_deleted=uploads,
        models_deleted=models,
        objects_deleted=objects,
        position=recorded.position,
        complete=complete,
    )


async def _stop_jobs(svc: Services, user_id: str) -> tuple[UUID, ...]:
    """Every unfinished job of the user cancelled as their own cancel would; the ids."""
    try:
        stopped = await svc.command(svc.application.stop_jobs_for_erasure, user_id, at=now())
    except NotFound:  # no credit account: the user never signed in, nothing of theirs ran
        return ()
    jobs = (*stopped.cancelled, *stopped.stopping)
    for job_id in jobs:  # the worker checks this flag every step
        await svc.redis.set(
            redis_keys.cancel_flag(svc.settings.redis_key_prefix, job_id),
            "1",
            ex=redis_keys.CANCEL_FLAG_TTL_S,
        )
    return jobs


async def _files_projected(svc: Services, position: int) -> bool:
    """Whether every read model step 4 reads has applied ``position`` (within
    ``PROJECTED_WAIT_S`` in all)."""
    behind = await first_behind(
        svc.pool, svc.settings, FILE_PROJECTIONS, position, timeout_s=PROJECTED_WAIT_S
    )
    if behind is not None:
        log.info("erasure waits for a read model", projection=behind, position=position)
    return behind is None


async def _delete_images(svc: Services, user_id: str, budget: _Budget) -> int:
    rows = await svc.pool.fetch(
        "SELECT job_id, name FROM images WHERE user_id = $1 AND deleted_at IS NULL"
        " AND job_id IS NOT NULL LIMIT $2",  # an upload's image goes with its upload, below
        user_id,
        budget.limit,
    )
    by_job: dict[UUID, list[str]] = {}
    for row in budget.take(rows):  # at most DELETIONS_PER_REQUEST
        by_job.setdefault(row["job_id"], []).append(row["name"])

    def delete(job_id: UUID) -> int:
        # One job's images one after the other (each writes the job): no conflicts between them.
        deleted = 0
        for name in by_job[job_id]:  # a job's batch: at most its batch size
            try:
                result = svc.application.delete_image(job_id, user_id=user_id, name=name, at=now())
            except NotFound:
                continue  # deleted meanwhile
            deleted += result.changed
        return deleted

    return await _each(svc, list(by_job), delete)


async def _delete_uploads(svc: Services, user_id: str, budget: _Budget) -> int:
    rows = await svc.pool.fetch(
        "SELECT upload_id FROM uploads WHERE user_id = $1 AND deleted_at IS NULL LIMIT $2",
        user_id,
        budget.limit,
    )
    app = svc.application
    ids = [r["upload_id"] for r in budget.take(rows)]
    return await _each(svc, ids, lambda i: _changed(app.delete_upload, user_id, i, at=now()))


async def _delete_models(svc: Services, user_id: str, budget: _Budget) -> int:
    rows = await svc.pool.fetch(
        "SELECT model_id FROM user_models WHERE user_id = $1 AND deleted_at IS NULL LIMIT $2",
        user_id,
        budget.limit,
    )
    app = svc.application
    ids = [r["model_id"] for r in budget.take(rows)]
    return await _each(svc, ids, lambda i: _changed(app.delete_user_model, user_id, i, at=now()))


def _changed(command: Callable[..., CommandResult], *args: Any, **kwargs: Any) -> int:
    """1 when the deletion was recorded now; 0 when it was deleted before or meanwhile."""
    try:
        return int(command(*args, **kwargs).changed)
    except NotFound:
        return 0


async def _each(svc: Services, items: list[T], delete: Callable[[T], int]) -> int:
    """``delete`` (commands, on command threads) for every item, a few at once: they share
    the event store's group commits. Returns the sum of what each deleted."""
    gate = asyncio.Semaphore(CONCURRENT_DELETES)

    async def one(item: T) -> int:
        async with gate:
            return await svc.command(delete, item)

    return sum(await asyncio.gather(*(one(i) for i in items)))


async def _forget_addresses(svc: Services, user_id: str) -> None:
    """The e-mail address of their sign-ins, and where each notification went: gone (the
    notifier's log keeps its rows, which make a redelivered event send nothing). A later
    sign-in records its address again: the user still has an account to be told about."""
    async with svc.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE notification_preferences SET email = NULL WHERE user_id = $1", user_id
        )
        await conn.execute("UPDATE notifications SET address = NULL WHERE user_id = $1", user_id)
    svc.addresses.drop(user_id)


def _prefixes(user_id: str) -> tuple[str, ...]:
    """The user's own objects in the bucket: images and thumbnails (gpu_consumer/outputs.py),
    uploads (domain/uploads.py) and LoRAs (domain/user_models.py)."""
    users = f"users/{user_id}/"
    return (
        f"{users}images/",
        f"{users}thumbnails/",
        f"{users}uploads/",
        user_models_prefix(user_id),
    )


async def _delete_objects(svc: Services, user_id: str) -> tuple[int, bool]:
    """The objects under the user's prefixes, deleted, at most ``S3_PAGES_PER_REQUEST`` pages
    of them: how many, and whether some may be left (for a repeat). A listing that finds a
    prefix empty costs no page (at most one per prefix), so a repeat always gets on. A
    failure is a 503 (the erasure is repeated; the key is gone already)."""
    bucket = svc.settings.s3_bucket
    deleted = 0
    pages = 0  # pages of objects listed and deleted
    try:
        for prefix in _prefixes(user_id):
            for _ in range(S3_PAGES_PER_REQUEST + 1):  # the last round only finds the bound
                if pages == S3_PAGES_PER_REQUEST:
                    return deleted, True  # this prefix may hold more: a repeat looks
                listed: dict[str, Any] = await svc.blocking(
                    svc.s3.list_objects_v2,
                    Bucket=bucket,
                    Prefix=prefix,
                    MaxKeys=S3_PAGE,
                )
                keys = [o["Key"] for o in listed.get("Contents", [])]
                if not keys:
                    break
                answer = await svc.blocking(
                    svc.s3.delete_objects,
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
                )
                if answer.get("Errors"):
                    raise ProblemError(
                        p.UNAVAILABLE,
                        "Some of your files could not be deleted yet; send the same "
                        "request again in a moment.",
                        headers={"Retry-After": "5"},
                    )
                pages += 1
                deleted += len(keys)
                if not listed.get("IsTruncated"):
                    break  # the prefix is empty now
    except (BotoCoreError, ClientError) as e:
        log.warning("erasure: objects not deleted", user=user_id, error=repr(e))
        raise ProblemError(
            p.UNAVAILABLE,
            "Your files could not be deleted yet (storage did not answer); send the same "
            "request again in a moment.",
            headers={"Retry-After": "5"},
        ) from None
    assert pages <= S3_PAGES_PER_REQUEST
    return deleted, False

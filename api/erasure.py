"""Erasure of a user's personal data (DELETE /v1/me, and the admin's route): crypto-shredding.

The event store is immutable history and the ledger is replayed from it, so nothing in it is
deleted. What a person wrote was never stored there in plaintext: the prompts are sealed under
the user's data key (domain/personal_data.py, infra/personal_keys.py). Erasing is therefore:

1. every unfinished job of theirs cancelled (none runs on a prompt that reads as erased;
   again once the key is gone, for a job submitted meanwhile);
2. each of their images, uploads and LoRAs deleted as their own deletes would
   (``ImageDeleted``, ``Upload.Deleted``, ``UserModel.Deleted``: the storage quota and the read
   models follow), and every object under their images, thumbnails, uploads and models in S3
   removed (also one whose deletion is not yet projected);
3. the e-mail address of their sign-ins forgotten (it is no event: notification_preferences);
4. their data key destroyed: from then on every sealed prompt of theirs reads "[erased]", in
   the API, the read models (also rebuilt), the exports and every replay;
5. ``PersonalData.Erased`` recorded: who erased, when, how much went, and nothing of what.

Events, postings, balances, receipts and the ledger's seals stay exact: they never held the
plaintext. Each step is idempotent, so a request that failed half-way (S3 down: a 503) is
repeated until it answers, and a repeat after a complete erasure changes nothing.
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

log = structlog.get_logger("api.erasure")
T = TypeVar("T")

CONCURRENT_DELETES = 8  # deletion commands at once (each on a command thread of the API)
S3_PAGE = 1000  # DeleteObjects takes at most 1000 keys; ListObjectsV2 answers as many
MAX_PAGES = 10_000  # ten million objects: far past any quota, a bound on the loop


@dataclass(frozen=True)
class Erasure:
    changed: bool  # False: nothing was left to erase
    key_destroyed: bool
    cancelled_jobs: int
    images_deleted: int
    uploads_deleted: int
    models_deleted: int
    objects_deleted: int
    position: int


async def erase_personal_data(svc: Services, user_id: str, *, actor: str) -> Erasure:
    app = svc.application
    at = now()
    jobs = await _stop_jobs(svc, user_id)
    images = await _delete_images(svc, user_id)
    uploads = await _delete_uploads(svc, user_id)
    models = await _delete_models(svc, user_id)
    objects = await _delete_objects(svc, user_id)
    await _forget_addresses(svc, user_id)
    destroyed = await svc.personal_keys.erase(user_id)
    # A job submitted while this ran was sealed under the key just destroyed: stopped too, so
    # that none runs on a prompt that reads "[erased]".
    jobs += await _stop_jobs(svc, user_id)
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


async def _delete_images(svc: Services, user_id: str) -> int:
    rows = await svc.pool.fetch(
        "SELECT job_id, name FROM images WHERE user_id = $1 AND deleted_at IS NULL"
        " AND job_id IS NOT NULL",  # an upload's image goes with its upload
        user_id,
    )
    by_job: dict[UUID, list[str]] = {}
    for row in rows:  # the user's images: bounded by their storage quota
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


async def _delete_uploads(svc: Services, user_id: str) -> int:
    rows = await svc.pool.fetch(
        "SELECT upload_id FROM uploads WHERE user_id = $1 AND deleted_at IS NULL", user_id
    )
    app = svc.application
    ids = [r["upload_id"] for r in rows]  # the user's uploads: bounded by their storage quota
    return await _each(svc, ids, lambda i: _changed(app.delete_upload, user_id, i, at=now()))


async def _delete_models(svc: Services, user_id: str) -> int:
    rows = await svc.pool.fetch(
        "SELECT model_id FROM user_models WHERE user_id = $1 AND deleted_at IS NULL", user_id
    )
    app = svc.application
    ids = [r["model_id"] for r in rows]  # the user's LoRAs: bounded by their storage quota
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


async def _delete_objects(svc: Services, user_id: str) -> int:
    """Every object under the user's prefixes, deleted; a failure is a 503 (the erasure is
    repeated, and its key stays until the objects are gone)."""
    bucket = svc.settings.s3_bucket
    deleted = 0
    try:
        for prefix in _prefixes(user_id):
            for _ in range(MAX_PAGES):
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
                        "Some of your files could not be deleted yet; send the same request "
                        "again in a moment.",
                        headers={"Retry-After": "5"},
                    )
                deleted += len(keys)
            else:
                raise AssertionError(f"more than {MAX_PAGES} pages under {prefix}")
    except (BotoCoreError, ClientError) as e:
        log.warning("erasure: objects not deleted", user=user_id, error=repr(e))
        raise ProblemError(
            p.UNAVAILABLE,
            "Your files could not be deleted yet (storage did not answer); send the same "
            "request again in a moment.",
            headers={"Retry-After": "5"},
        ) from None
    return deleted

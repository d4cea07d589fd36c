"""Projection "jobs": job status and parameters, the images a job produced, and usage records.

Job events after ``Submitted`` carry only the job id; the user comes from the job's own row
(the runner delivers a job's events in order). One statement per event: a terminal event
updates the job and writes its images and usage record together.

Deleting an image (``ImageDeleted``) marks its row ``deleted_at``: the storage quota counts
only images that are not deleted, and the queries list only those. An image's category and
origin are written with it (what a job produces, domain/job_events.py); its owner's flags
(``starred``, ``is_intermediate``) follow their events.

Uploads are images too (InvokeAI's gallery lists them: origin external, category user, or
mask by the upload's purpose): a completed upload is an image row named by its upload id,
written here from the Upload events so that the images table is whole in one projection (one
rebuild, one consistency position). ``Upload.Requested`` records the owner, key and category
in ``upload_owners`` (``Completed`` carries none of them), ``Upload.Completed`` writes the
image from it, ``Upload.Deleted`` marks it deleted, and the owner's flags follow their events
(``Upload.Starred`` ...) as a job's images' do.
``Upload.Filed`` is the boards projection's, like ``GenerationJob.ImageFiled``: here it only
moves the upload on. Only those are wanted: what else an upload records (its rejection) is the
uploads projection's, which leaves the image's own events (``UPLOAD_IMAGE_EVENTS``) to this one.

Usage: one record per job whose hold was settled, i.e. that ran and was billed (completed,
failed through the user's fault, cancelled after it started), even at 0 mc. Platform failures
and cancellations before start void the hold and leave no usage record.
"""

from __future__ import annotations

import json
from typing import Any

from domain.job_events import (
    PRODUCED_IMAGE_CATEGORY,
    PRODUCED_IMAGE_ORIGIN,
    UPLOADED_IMAGE_ORIGIN,
)
from domain.job_lifecycle import Fault
from domain.jobs import JobStatus
from domain.uploads import UPLOAD_CATEGORIES, UploadPurpose
from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.batching import EventStatements, TableProjection

# Every statement starts with $1 job id, $2 occurred_at, $3 position.

_SUBMITTED = """
INSERT INTO jobs (
    job_id, user_id, idempotency_key, status, model, tier, steps, width, height, batch_size,
    seed, parameters, submitted_at, updated_at, submitted_position, position
)
VALUES ($1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $2, $2, $3, $3)
"""


def _update(assignments: str, *more: str) -> str:
    """Update the job (which must exist), and run the ``more`` CTEs that read ``job``: the
    updated row."""
    ctes = "".join(f",\n{cte}" for cte in more)
    return f"""
WITH job AS (
    UPDATE jobs SET {assignments}, updated_at = $2, position = $3 WHERE job_id = $1
    RETURNING *
){ctes}
SELECT read_model_check(
    EXISTS (SELECT 1 FROM job), 'an event of job ' || $1::text || ', which was never submitted'
)
"""


def _usage_if(condition: str) -> str:
    return f"""usage AS (
    INSERT INTO usage_records (
        job_id, user_id, outcome, model, tier, steps, width, height, batch_size,
        gpu_ms, cuda_ms, charged_mc, occurred_at, position
    )
    SELECT job_id, user_id, status, model, tier, steps, width, height, batch_size,
        gpu_ms, cuda_ms, charged_mc, $2, $3
    FROM job WHERE {condition}
)"""


_IMAGES = """images AS (
    INSERT INTO images (
        user_id, name, job_id, idx, key, thumbnail_key, size_bytes, width, height,
        created_at, position, image_category, image_origin, starred, is_intermediate
    )
    SELECT job.user_id, i.name, job.job_id, i.idx - 1, i.key, i.thumbnail_key, i.size_bytes,
        i.width, i.height, $2, $3, $14, $15, false, false
    FROM job, unnest($8::text[], $9::text[], $10::text[], $11::bigint[], $12::int[], $13::int[])
        WITH ORDINALITY AS i(name, key, thumbnail_key, size_bytes, width, height, idx)
)"""

_ACCEPTED = _update(
    "status = $4, hold_id = $5, hold_mc = $6, budget_ms = $7, estimate_ms = $8, accepted_at = $2"
)
_REJECTED = _update("status = $4, rejection_reason = $5, rejection_detail = $6, finished_at = $2")
_DISPATCHED = _update("status = $4, attempt = $5, worker_id = $6, dispatched_at = $2")
_STARTED = _update("status = $4, worker_id = $5, gpu = $6, started_at = $2")
_CANCEL_REQUESTED = _update("cancel_requested = true")
_ATTEMPT_FAILED = _update("status = $4, failure_reason = $5")
_COMPLETED = _update(
    "status = $4, gpu_ms = $5, cuda_ms = $6, charged_mc = $7,"
    " image_count = cardinality($8::text[]), finished_at = $2",
    _usage_if("true"),
    _IMAGES,
)
_FAILED = _update(
    "status = $4, failure_reason = $5, failure_fault = $6, retryable = $7, gpu_ms = $8,"
    " charged_mc = $9, finished_at = $2",
    _usage_if("$10"),
)
_CANCELLED = _update(
    "status = $4, gpu_ms = $5, charged_mc = $6, finished_at = $2",
    _usage_if("$7"),
)
# The owner deleted an image: it stops counting against their storage quota and disappears
# from every listing (the row stays, marked, as the event history does).
_IMAGE_DELETED = """
WITH job AS (
    UPDATE jobs SET updated_at = $2, position = $3 WHERE job_id = $1
), image AS (
    UPDATE images SET deleted_at = $2 WHERE job_id = $1 AND name = $4 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM image),
    'image ' || $4 || ' of job ' || $1::text || ' was deleted, but never produced'
)
"""
# The owner's flags on an image ($4 its name, $5 the flag's new value): each event sets one.
_IMAGE_FLAG = """
WITH job AS (
    UPDATE jobs SET updated_at = $2, position = $3 WHERE job_id = $1
), image AS (
    UPDATE images SET {flag} = $5 WHERE job_id = $1 AND name = $4 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM image),
    'image ' || $4 || ' of job ' || $1::text || ' was flagged, but never produced'
)
"""
_IMAGE_STARRED = _IMAGE_FLAG.format(flag="starred")
_IMAGE_INTERMEDIATE = _IMAGE_FLAG.format(flag="is_intermediate")
# Filing an image on a board is the boards projection's (projections/boards.py); the job only
# records where its image went, so its row moves on to the event's position.
_IMAGE_FILED = "UPDATE jobs SET updated_at = $2, position = $3 WHERE job_id = $1"
# An upload's owner, key and category (by its purpose), for its image ($4 user, $5 key, $6
# category).
_UPLOAD_REQUESTED = """
INSERT INTO upload_owners (upload_id, user_id, key, image_category, requested_at, position)
VALUES ($1, $4, $5, $6, $2, $3)
"""
# A completed upload is one of its owner's images, named by its id: $4 size, $5 width, $6
# height, $7 origin. It has no thumbnail of its own: the image is its own.
_UPLOAD_COMPLETED = """
WITH owner AS (
    UPDATE upload_owners SET position = $3 WHERE upload_id = $1
    RETURNING user_id, key, image_category
), image AS (
    INSERT INTO images (
        user_id, name, job_id, upload_id, idx, key, thumbnail_key, size_bytes, width, height,
        created_at, position, image_category, image_origin, starred, is_intermediate
    )
    SELECT owner.user_id, $1::text, NULL, $1, 0, owner.key, owner.key, $4, $5, $6, $2, $3,
        owner.image_category, $7, false, false
    FROM owner
    RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM image), 'upload ' || $1::text || ' was completed, but never requested'
)
"""
# A deleted upload leaves the gallery (an upload rejected or never completed has no image).
_UPLOAD_DELETED = """
WITH owner AS (UPDATE upload_owners SET position = $3 WHERE upload_id = $1)
UPDATE images SET deleted_at = $2 WHERE upload_id = $1
"""
# The owner's flags on an upload's image ($4 the flag's new value): each event sets one.
_UPLOAD_FLAG = """
WITH owner AS (
    UPDATE upload_owners SET position = $3 WHERE upload_id = $1
), image AS (
    UPDATE images SET {flag} = $4 WHERE upload_id = $1 RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM image),
    'upload ' || $1::text || ' was flagged at ' || $2::timestamptz::text || ', never completed'
)
"""
_UPLOAD_STARRED = _UPLOAD_FLAG.format(flag="starred")
_UPLOAD_INTERMEDIATE = _UPLOAD_FLAG.format(flag="is_intermediate")
# Filing an upload's image on a board is the boards projection's (projections/boards.py).
_UPLOAD_FILED = """
WITH owner AS (UPDATE upload_owners SET position = $3 WHERE upload_id = $1 RETURNING 1)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM owner),
    'upload ' || $1::text || ' was filed at ' || $2::timestamptz::text || ', never requested'
)
"""
# The events of an upload as one of its user's images: this projection's, not the uploads one's.
UPLOAD_IMAGE_STATEMENTS: EventStatements = {
    "Upload.Starred": (_UPLOAD_STARRED, lambda ev: (True,)),
    "Upload.Unstarred": (_UPLOAD_STARRED, lambda ev: (False,)),
    "Upload.MarkedIntermediate": (_UPLOAD_INTERMEDIATE, lambda ev: (True,)),
    "Upload.UnmarkedIntermediate": (_UPLOAD_INTERMEDIATE, lambda ev: (False,)),
    "Upload.Filed": (_UPLOAD_FILED, lambda ev: ()),
}
UPLOAD_IMAGE_EVENTS = frozenset(UPLOAD_IMAGE_STATEMENTS)
_UPLOAD_STATEMENTS: EventStatements = {
    "Upload.Requested": (
        _UPLOAD_REQUESTED,
        lambda ev: (ev.user_id, ev.key, UPLOAD_CATEGORIES[UploadPurpose(ev.purpose)].value),
    ),
    "Upload.Completed": (
        _UPLOAD_COMPLETED,
        lambda ev: (ev.size_bytes, ev.width, ev.height, UPLOADED_IMAGE_ORIGIN.value),
    ),
    "Upload.Deleted": (_UPLOAD_DELETED, lambda ev: ()),
    **UPLOAD_IMAGE_STATEMENTS,
}
_REFUNDED = _update(
    "refunded_mc = $4",
    "usage AS (UPDATE usage_records SET refunded_mc = $4 WHERE job_id = $1)",
)


def _submitted(ev: Any) -> tuple[Any, ...]:
    params = ev.parameters
    return (
        ev.user_id,
        ev.idempotency_key,
        JobStatus.SUBMITTED.value,
        params["model"],
        ev.tier,
        params["steps"],
        params["width"],
        params["height"],
        params["batch_size"],
        ev.seed,
        json.dumps(params, sort_keys=True),
    )


def _completed(ev: Any) -> tuple[Any, ...]:
    images = ev.images
    return (
        JobStatus.COMPLETED.value,
        ev.gpu_ms,
        ev.cuda_ms,
        ev.charged_mc,
        [i["name"] for i in images],
        [i["key"] for i in images],
        [i["thumbnail_key"] for i in images],
        [i["size_bytes"] for i in images],
        [i["width"] for i in images],
        [i["height"] for i in images],
        PRODUCED_IMAGE_CATEGORY.value,
        PRODUCED_IMAGE_ORIGIN.value,
    )


def _failed(ev: Any) -> tuple[Any, ...]:
    billed = ev.fault == Fault.USER.value  # a user-fault failure is billed; a platform one not
    return (
        JobStatus.FAILED.value,
        ev.reason,
        ev.fault,
        ev.retryable,
        ev.gpu_ms,
        ev.charged_mc,
        billed,
    )


def _cancelled(ev: Any) -> tuple[Any, ...]:
    # Cancelled before start: hold voided, nothing ran. Stopped by the worker: billed.
    ran = ev.after_start or ev.gpu_ms > 0 or ev.charged_mc > 0
    return JobStatus.CANCELLED.value, ev.gpu_ms, ev.charged_mc, ran


# By public type name (an event class renamed or removed only ever fails to match): the
# statement and the event's own arguments, from $4 on.
_STATEMENTS: EventStatements = {
    "GenerationJob.Submitted": (_SUBMITTED, _submitted),
    "GenerationJob.Accepted": (
        _ACCEPTED,
        lambda ev: (
            JobStatus.ACCEPTED.value,
            str(ev.originator_id),  # the hold id, as GenerationJob.hold_id
            ev.hold_mc,
            ev.budget_ms,
            ev.estimate_ms,
        ),
    ),
    "GenerationJob.Rejected": (
        _REJECTED,
        lambda ev: (JobStatus.REJECTED.value, ev.reason, ev.detail),
    ),
    "GenerationJob.Dispatched": (
        _DISPATCHED,
        lambda ev: (JobStatus.DISPATCHED.value, ev.attempt, ev.worker_id),
    ),
    "GenerationJob.Started": (
        _STARTED,
        lambda ev: (JobStatus.RUNNING.value, ev.worker_id, ev.gpu),
    ),
    "GenerationJob.CancelRequested": (_CANCEL_REQUESTED, lambda ev: ()),
    # A retryable failure puts the job back in the queue (GenerationJob._attempt_failed).
    "GenerationJob.AttemptFailed": (
        _ATTEMPT_FAILED,
        lambda ev: (JobStatus.ACCEPTED.value, ev.reason),
    ),
    "GenerationJob.Completed": (_COMPLETED, _completed),
    "GenerationJob.Failed": (_FAILED, _failed),
    "GenerationJob.Cancelled": (_CANCELLED, _cancelled),
    "GenerationJob.Refunded": (_REFUNDED, lambda ev: (ev.amount_mc,)),
    "GenerationJob.ImageDeleted": (_IMAGE_DELETED, lambda ev: (ev.name,)),
    "GenerationJob.ImageFiled": (_IMAGE_FILED, lambda ev: ()),
    "GenerationJob.ImageStarred": (_IMAGE_STARRED, lambda ev: (ev.name, True)),
    "GenerationJob.ImageUnstarred": (_IMAGE_STARRED, lambda ev: (ev.name, False)),
    "GenerationJob.ImageMarkedIntermediate": (_IMAGE_INTERMEDIATE, lambda ev: (ev.name, True)),
    "GenerationJob.ImageUnmarkedIntermediate": (
        _IMAGE_INTERMEDIATE,
        lambda ev: (ev.name, False),
    ),
}


class JobsProjection(TableProjection):
    name = "jobs"
    event_statements = {**_STATEMENTS, **_UPLOAD_STATEMENTS}
    topics = (JOBS_TOPIC,)
    tables = ("jobs", "images", "usage_records", "upload_owners")

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "GenerationJob" or env.type in _UPLOAD_STATEMENTS

"""A job's view as GET /v1/jobs/{id} and the event stream answer it: the read-model row, plus
what changes without the job changing: its place in its tier's queue (read_models/queue.py)
and, once completed, its images' signed URLs, fresh on every read (api/image_urls.py).

A finished job's row never changes again, so its view is cached (``job_cache``) without URLs
(they expire), together with its images' keys, and signed again on each read.

Its prompts are personal data, sealed under the user's data key (domain/personal_data.py):
the read model and the cache keep them sealed, and each read opens them with the key as it is
then, so a view read after the user's erasure says "[erased]", cached or not.

``recall_parameters`` is where a job's stored parameters become what its owner reads back (an
image's generation metadata) and resubmits (a remix), its prompts opened the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from api.image_urls import signed_urls
from api.schemas import JobView, QueueBasis, QueueView
from api.services import Services, now
from domain import personal_data
from domain.job_lifecycle import TERMINAL
from domain.jobs import JobStatus
from domain.parameters import RunParameters
from read_models import queries
from read_models.models import ImageDetail, Job
from read_models.queue import QueuePlace, queue_places


async def job_view(svc: Services, user_id: str, job_id: UUID, *, cached: bool) -> Any | None:
    """The JSON of the user's job ``job_id`` (None: no such job of theirs). ``cached``: a
    finished job may come from the cache (not when the caller waits for a position)."""
    key = str(job_id)
    if cached:
        hit = await svc.job_cache.get(key)
        if hit is not None and hit.get("user_id") == user_id and "image_keys" in hit:
            return with_urls(svc, await opened_view(svc, user_id, hit["view"]), hit["image_keys"])
    job = await queries.get_job(svc.pool, user_id, job_id)
    if job is None:
        return None
    view = sealed_view(job)
    image_keys = {i.name: [i.key, i.thumbnail_key] for i in job.images}
    if job.status in TERMINAL:
        dumped = view.model_dump(mode="json")
        entry = {"user_id": user_id, "view": dumped, "image_keys": image_keys}
        await svc.job_cache.set(key, entry)
        return with_urls(svc, await opened_view(svc, user_id, dumped), image_keys)
    if job.status == JobStatus.ACCEPTED.value:
        view.queue = await queue_view(svc, job_id)
    return await opened_view(svc, user_id, view.model_dump(mode="json"))


def sealed_view(job: Job) -> JobView:
    """The job's view with its prompts as stored (sealed, or plaintext from before sealing)."""
    view = JobView.model_validate(job)
    for name, value in job.sealed.items():  # its personal fields only: the prompts
        setattr(view, name, value)
    return view


async def opened_view(svc: Services, user_id: str, view: dict[str, Any]) -> dict[str, Any]:
    """A view's JSON with its sealed prompts opened by the user's key as it is now."""
    if not personal_data.is_sealed_parameters(view):
        return view
    return personal_data.opened(view, await svc.personal_keys.opener(user_id))


async def opened_views(svc: Services, user_id: str, jobs: Sequence[Job]) -> list[JobView]:
    """The views of a page of the user's jobs, their prompts opened (one key read)."""
    views = [sealed_view(job) for job in jobs]
    if not any(job.sealed for job in jobs):
        return views
    opener = await svc.personal_keys.opener(user_id)
    for view, job in zip(views, jobs, strict=True):
        for name, value in personal_data.opened(dict(job.sealed), opener).items():
            setattr(view, name, value)
    return views


async def recall_parameters(
    svc: Services, user_id: str, images: Sequence[ImageDetail]
) -> list[RunParameters | None]:
    """Each of the user's images' generation metadata: its job's stored parameters as their
    owner reads them back, the prompts opened (one key read for them all), with the seed the
    job ran with; None for an upload, which no job made. The one place the API turns a job's
    stored parameters into what it shows for an image or submits again (a remix): the
    strength is the one the job ran with (its kind's default when none was sent)."""
    opener = await svc.personal_keys.opener(user_id) if any(i.sealed for i in images) else None
    recalled: list[RunParameters | None] = []
    for image in images:  # a page: at most MAX_LIMIT
        if image.parameters is None:
            recalled.append(None)
            continue
        data = image.parameters.model_dump() | {"strength": image.parameters.run_strength}
        if opener is not None:
            data |= personal_data.opened(dict(image.sealed), opener)
        recalled.append(RunParameters.model_validate({**data, "seed": image.seed}))
    return recalled


def with_urls(svc: Services, view: dict[str, Any], image_keys: dict[str, list[str]]) -> Any:
    """``view`` with each image's URLs signed now."""
    at = now()
    images = []
    for image in view["images"]:  # a job's batch: at most its batch size
        keys = image_keys.get(image["name"])
        if keys is not None:
            image = {**image, **signed_urls(svc.image_urls, keys[0], keys[1], at)}
        images.append(image)
    return JobView.model_validate({**view, "images": images}).model_dump(mode="json")


async def queue_view(svc: Services, job_id: UUID) -> QueueView | None:
    """The job's place in its tier's queue now; None when it is not queued."""
    place = (await queue_places(svc.pool, [job_id], now())).get(job_id)
    return None if place is None else _queue(place)


def _queue(place: QueuePlace) -> QueueView:
    service = place.service
    return QueueView(
        position=place.position,
        start_in_ms=place.start_in_ms,
        done_in_ms=place.done_in_ms,
        basis=QueueBasis(
            tier=service.tier,
            jobs_ahead=place.jobs_ahead,
            in_service=place.in_service,
            sampled_jobs=service.sampled_jobs,
            mean_run_ms=service.mean_run_ms,
            workers=service.workers,
        ),
    )

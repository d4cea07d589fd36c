"""The events of a GenerationJob: their stored shape, and their effect on the job.

Every event is stored (``pinksea_events``), published (``pinksea.jobs.v1``) and documented
(``docs/events/``, generated from these classes). Their topics, names and fields are the stored
shape: never rename or remove one, nor change a field's meaning
(tests/unit/test_event_contract.py). Beside each event is its effect, the body the library runs
when a command triggers it and again on every replay: it only mutates (no clock, no checks, no
decisions), because a stored event is history. What may follow what is decided before an event
is raised, by the lifecycle in domain/job_lifecycle.py; the status values live here because the
effects set them and the read models and the API publish them.

``GenerationJob`` (domain/jobs.py) binds each class as its attribute of the same name (where
the library makes it the job's own event: use ``GenerationJob.Completed``) and each effect as
the ``@event`` method that triggers it, as CreditAccount does with domain/credit_events.py.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired

from eventsourcing.domain import Aggregate
from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

if TYPE_CHECKING:
    from domain.jobs import GenerationJob


class JobStatus(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ImageRecord(TypedDict):
    name: str
    key: str  # S3 key of the PNG
    thumbnail_key: str  # S3 key of the WebP thumbnail
    size_bytes: int
    width: int
    height: int
    sha256: NotRequired[str | None]  # of the PNG, as the worker uploaded it (receipts)


class ImageCategory(StrEnum):
    """What an image is for (InvokeAI's ``ImageCategory``, the same values): every image a job
    produces is ``general`` (an output); the others are the categories of input images."""

    GENERAL = "general"  # an output, or an init image: no specialised purpose
    MASK = "mask"  # an inpainting mask
    CONTROL = "control"  # a ControlNet control image
    USER = "user"  # an image a user provided (an upload)
    OTHER = "other"


class ImageOrigin(StrEnum):
    """Where an image came from (InvokeAI's ``ResourceOrigin``, the same values)."""

    INTERNAL = "internal"  # made by the service: a job produced it
    EXTERNAL = "external"  # not made here: an upload


# Every image a job produces, as ``Completed`` records it: an output made here. The projection
# writes these, and ``ledger verify`` expects them, from this one definition.
PRODUCED_IMAGE_CATEGORY = ImageCategory.GENERAL
PRODUCED_IMAGE_ORIGIN = ImageOrigin.INTERNAL
# Every completed upload, as the gallery lists it (InvokeAI's: a user's image from outside).
UPLOADED_IMAGE_CATEGORY = ImageCategory.USER
UPLOADED_IMAGE_ORIGIN = ImageOrigin.EXTERNAL


class WebhookTarget(TypedDict):
    """A submission's own webhook (domain/job_webhooks.py): its URL and the events it wants."""

    url: str
    events: list[str]  # job.accepted, job.started, job.completed, job.failed, job.cancelled


class Created(Aggregate.Created):
    # The library requires an explicit topic on the inherited default; we use Submitted.
    TOPIC = "pinksea:GenerationJob.Created"


class Submitted(Aggregate.Created):
    TOPIC = "pinksea:GenerationJob.Submitted"
    user_id: str
    idempotency_key: str
    parameters: dict[str, Any]
    seed: int
    fingerprint: str
    tier: str
    # Added with completion webhooks: absent from the jobs submitted before (read as None).
    webhook: WebhookTarget | None = None


class Accepted(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Accepted"
    hold_mc: int
    budget_ms: int
    estimate_ms: int


def accepted(
    self: GenerationJob, hold_mc: int, budget_ms: int, estimate_ms: int, timestamp: datetime
) -> None:
    self.status = JobStatus.ACCEPTED.value
    self.hold_mc = hold_mc
    self.budget_ms = budget_ms
    self.estimate_ms = estimate_ms


class Rejected(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Rejected"
    reason: str
    detail: str


def rejected(self: GenerationJob, reason: str, detail: str, timestamp: datetime) -> None:
    self.status = JobStatus.REJECTED.value
    self.rejection = reason
    self.rejection_detail = detail


class Dispatched(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Dispatched"
    attempt: int
    worker_id: str


def dispatched(self: GenerationJob, attempt: int, worker_id: str, timestamp: datetime) -> None:
    self.status = JobStatus.DISPATCHED.value
    self.attempt = attempt
    self.worker_id = worker_id


class Started(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Started"
    attempt: int
    worker_id: str
    gpu: str


def started(
    self: GenerationJob, attempt: int, worker_id: str, gpu: str, timestamp: datetime
) -> None:
    self.status = JobStatus.RUNNING.value
    self.worker_id = worker_id


class CancelRequested(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.CancelRequested"


def cancel_requested(self: GenerationJob, timestamp: datetime) -> None:
    self.cancel_requested = True


class Completed(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Completed"
    attempt: int
    gpu_ms: int
    cuda_ms: int | None
    charged_mc: int
    images: list[ImageRecord]


def completed(
    self: GenerationJob,
    attempt: int,
    gpu_ms: int,
    cuda_ms: int | None,
    charged_mc: int,
    images: list[ImageRecord],
    timestamp: datetime,
) -> None:
    self.status = JobStatus.COMPLETED.value
    self.gpu_ms = gpu_ms
    self.cuda_ms = cuda_ms
    self.charged_mc = charged_mc
    self.images = images


class AttemptFailed(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.AttemptFailed"
    attempt: int
    reason: str


def attempt_failed(self: GenerationJob, attempt: int, reason: str, timestamp: datetime) -> None:
    self.status = JobStatus.ACCEPTED.value  # back in the queue, the hold kept
    self.failure = reason


class Failed(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Failed"
    attempt: int
    reason: str
    retryable: bool
    fault: str
    gpu_ms: int
    charged_mc: int


def failed(
    self: GenerationJob,
    attempt: int,
    reason: str,
    retryable: bool,
    fault: str,
    gpu_ms: int,
    charged_mc: int,
    timestamp: datetime,
) -> None:
    self.status = JobStatus.FAILED.value
    self.failure = reason
    self.gpu_ms = gpu_ms
    self.charged_mc = charged_mc


class Cancelled(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Cancelled"
    after_start: bool
    gpu_ms: int
    charged_mc: int


def cancelled(
    self: GenerationJob, after_start: bool, gpu_ms: int, charged_mc: int, timestamp: datetime
) -> None:
    self.status = JobStatus.CANCELLED.value
    self.gpu_ms = gpu_ms
    self.charged_mc = charged_mc


class Refunded(Aggregate.Event):
    TOPIC = "pinksea:GenerationJob.Refunded"
    amount_mc: int
    reason: str
    actor: str


def refunded(
    self: GenerationJob, amount_mc: int, reason: str, actor: str, timestamp: datetime
) -> None:
    self.refunded_mc = amount_mc


class ImageDeleted(Aggregate.Event):
    """The owner deleted one of the job's images: it no longer counts against their storage
    quota, and its S3 objects (named here, so a consumer can remove them) are to go."""

    TOPIC = "pinksea:GenerationJob.ImageDeleted"
    name: str
    key: str
    thumbnail_key: str


def image_deleted(
    self: GenerationJob, name: str, key: str, thumbnail_key: str, timestamp: datetime
) -> None:
    self.deleted_images[name] = timestamp


class ImageFiled(Aggregate.Event):
    """The owner put one of the job's images on a board (domain/boards.py): the job keeps the
    board's id so that two boards never both take the image (each filing writes the job)."""

    TOPIC = "pinksea:GenerationJob.ImageFiled"
    name: str
    board_id: str


def image_filed(self: GenerationJob, name: str, board_id: str, timestamp: datetime) -> None:
    self.image_boards[name] = board_id


class ImageStarred(Aggregate.Event):
    """The owner starred one of the job's images (InvokeAI's ``starred``)."""

    TOPIC = "pinksea:GenerationJob.ImageStarred"
    name: str


def image_starred(self: GenerationJob, name: str, timestamp: datetime) -> None:
    self.starred_images.add(name)


class ImageUnstarred(Aggregate.Event):
    """The owner took the star off one of the job's images."""

    TOPIC = "pinksea:GenerationJob.ImageUnstarred"
    name: str


def image_unstarred(self: GenerationJob, name: str, timestamp: datetime) -> None:
    self.starred_images.discard(name)


class ImageMarkedIntermediate(Aggregate.Event):
    """The owner marked one of the job's images intermediate (a step on the way, not a
    result): image lists leave it out unless asked for intermediates, as InvokeAI's do."""

    TOPIC = "pinksea:GenerationJob.ImageMarkedIntermediate"
    name: str


def image_marked_intermediate(self: GenerationJob, name: str, timestamp: datetime) -> None:
    self.intermediate_images.add(name)


class ImageUnmarkedIntermediate(Aggregate.Event):
    """The owner made an intermediate image of the job a result again."""

    TOPIC = "pinksea:GenerationJob.ImageUnmarkedIntermediate"
    name: str


def image_unmarked_intermediate(self: GenerationJob, name: str, timestamp: datetime) -> None:
    self.intermediate_images.discard(name)

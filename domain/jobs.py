"""GenerationJob: one text-to-image request from submission to its single billing outcome.

    submitted -> accepted (credits held) | rejected (reason code)
    accepted  -> dispatched (attempt n) -> running -> completed | failed | cancelled
    a retryable failure of attempt n < MAX_ATTEMPTS puts the job back to accepted.

Reports name their attempt; a report of any attempt but the current one is stale and changes
nothing, so an abandoned attempt can never be billed later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

from domain import ids
from domain.catalog import MODELS, get_model
from domain.errors import IdempotencyConflict, InvalidParameters, InvalidTransition, NotFound
from domain.units import require_aware

MAX_ATTEMPTS = 3
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SCHEDULERS = frozenset({"ddim", "dpm++_2m", "euler", "euler_a", "lms", "pndm"})


class JobStatus(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset(
    {
        JobStatus.REJECTED.value,
        JobStatus.COMPLETED.value,
        JobStatus.FAILED.value,
        JobStatus.CANCELLED.value,
    }
)


class RejectionReason(StrEnum):
    INSUFFICIENT_CREDITS = "insufficient_credits"
    MODEL_NOT_IN_PLAN = "model_not_in_plan"
    QUEUE_LIMIT = "queue_limit"
    STORAGE_QUOTA = "storage_quota"
    PAYMENT_FAILED = "payment_failed"


class Fault(StrEnum):
    """Who a failure is down to: platform failures are never billed."""

    PLATFORM = "platform"
    USER = "user"


class ImageRecord(TypedDict):
    name: str
    key: str  # S3 key of the PNG
    thumbnail_key: str  # S3 key of the WebP thumbnail
    size_bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class JobParameters:
    model: str
    prompt: str
    steps: int
    width: int
    height: int
    batch_size: int = 1
    negative_prompt: str = ""
    seed: int | None = None
    guidance_scale: float = 7.5
    scheduler: str | None = None

    def validate(self) -> None:
        """Raise InvalidParameters with every problem, each saying what is allowed."""
        problems: list[str] = []
        spec = get_model(self.model)
        if spec is None:
            problems.append(f"model {self.model!r} is unknown; choose one of {', '.join(MODELS)}")
        if not self.prompt.strip():
            problems.append("prompt must not be empty")
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                problems.append(
                    f"{name} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}"
                )
        if not 1 <= self.steps <= 150:
            problems.append("steps must be between 1 and 150")
        if not 1 <= self.batch_size <= 8:
            problems.append("batch_size must be between 1 and 8")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be between 0 and {MAX_SEED}")
        if not 0.0 <= self.guidance_scale <= 30.0:
            problems.append("guidance_scale must be between 0 and 30")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {', '.join(sorted(SCHEDULERS))}")
        if spec is not None:
            r = spec.sizes
            for name, px in (("width", self.width), ("height", self.height)):
                if not r.min_px <= px <= r.max_px or px % r.multiple:
                    problems.append(
                        f"{name} must be a multiple of {r.multiple} between {r.min_px} and "
                        f"{r.max_px} for {self.model}"
                    )
        if problems:
            raise InvalidParameters("; ".join(problems))

    def fingerprint(self) -> str:
        """Digest of the parameters: one Idempotency-Key with other parameters is a conflict."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def as_event_data(self) -> dict[str, Any]:
        return asdict(self)


def seed_for(job_id: UUID, requested: int | None) -> int:
    """The seed a job runs with: the requested one, or one derived from the job id, so every
    attempt of a job produces the same image."""
    return requested if requested is not None else job_id.int & MAX_SEED


class GenerationJob(Aggregate):
    TOPIC = "pinksea:GenerationJob"

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

    class Accepted(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Accepted"
        hold_mc: int
        budget_ms: int
        estimate_ms: int

    class Rejected(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Rejected"
        reason: str
        detail: str

    class Dispatched(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Dispatched"
        attempt: int
        worker_id: str

    class Started(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Started"
        attempt: int
        worker_id: str
        gpu: str

    class CancelRequested(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.CancelRequested"

    class Completed(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Completed"
        attempt: int
        gpu_ms: int
        cuda_ms: int | None
        charged_mc: int
        images: list[ImageRecord]

    class AttemptFailed(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.AttemptFailed"
        attempt: int
        reason: str

    class Failed(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Failed"
        attempt: int
        reason: str
        retryable: bool
        fault: str
        gpu_ms: int
        charged_mc: int

    class Cancelled(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Cancelled"
        after_start: bool
        gpu_ms: int
        charged_mc: int

    class Refunded(Aggregate.Event):
        TOPIC = "pinksea:GenerationJob.Refunded"
        amount_mc: int
        reason: str
        actor: str

    class ImageDeleted(Aggregate.Event):
        """The owner deleted one of the job's images: it no longer counts against their storage
        quota, and its S3 objects (named here, so a consumer can remove them) are to go."""

        TOPIC = "pinksea:GenerationJob.ImageDeleted"
        name: str
        key: str
        thumbnail_key: str

    @staticmethod
    def create_id(user_id: str, idempotency_key: str) -> UUID:
        return ids.job_id(user_id, idempotency_key)

    @event(Submitted)
    def __init__(
        self,
        user_id: str,
        idempotency_key: str,
        parameters: dict[str, Any],
        seed: int,
        fingerprint: str,
        tier: str,
        timestamp: datetime,
    ) -> None:
        self.user_id = user_id
        self.idempotency_key = idempotency_key
        self.parameters = parameters
        self.seed = seed
        self.fingerprint = fingerprint
        self.tier = tier
        self.status = JobStatus.SUBMITTED.value
        self.submitted_at = timestamp
        self.hold_mc = 0
        self.budget_ms = 0
        self.estimate_ms = 0
        self.rejection: str | None = None
        self.rejection_detail: str | None = None
        self.attempt = 0
        self.worker_id: str | None = None
        self.cancel_requested = False
        self.gpu_ms = 0
        self.cuda_ms: int | None = None
        self.charged_mc = 0
        self.refunded_mc = 0
        self.images: list[ImageRecord] = []  # as produced; deletions do not remove them
        self.deleted_images: dict[str, datetime] = {}  # image name -> when it was deleted
        self.failure: str | None = None

    @classmethod
    def submit(
        cls, *, user_id: str, idempotency_key: str, params: JobParameters, tier: str, at: datetime
    ) -> GenerationJob:
        require_aware(at)
        params.validate()
        job_uuid = ids.job_id(user_id, idempotency_key)
        return cls(
            user_id=user_id,
            idempotency_key=idempotency_key,
            parameters=params.as_event_data(),
            seed=seed_for(job_uuid, params.seed),
            fingerprint=params.fingerprint(),
            tier=tier,
            timestamp=at,
        )

    # ----------------------------------------------------------------------------- queries

    @property
    def hold_id(self) -> str:
        return str(self.id)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def has_started(self) -> bool:
        return self.status == JobStatus.RUNNING.value

    def ensure_same_request(self, params: JobParameters) -> None:
        if params.fingerprint() != self.fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request; use a new key"
            )

    def is_current(self, attempt: int) -> bool:
        return attempt == self.attempt and self.status in (
            JobStatus.DISPATCHED.value,
            JobStatus.RUNNING.value,
        )

    # ---------------------------------------------------------------------------- commands

    def accept(self, *, hold_mc: int, estimate_ms: int, budget_ms: int, at: datetime) -> None:
        self._require(JobStatus.SUBMITTED)
        self._accepted(hold_mc=hold_mc, budget_ms=budget_ms, estimate_ms=estimate_ms, timestamp=at)

    def reject(self, *, reason: RejectionReason, detail: str, at: datetime) -> None:
        self._require(JobStatus.SUBMITTED)
        self._rejected(reason=reason.value, detail=detail, timestamp=at)

    def dispatch(self, *, attempt: int, worker_id: str, at: datetime) -> bool:
        """Record that the scheduler handed attempt ``attempt`` to a worker. A new attempt may
        replace one whose worker went silent (lease expired)."""
        require_aware(at)
        if attempt == self.attempt and self.status != JobStatus.ACCEPTED.value:
            return False  # this dispatch was recorded already
        if self.is_terminal or self.status == JobStatus.SUBMITTED.value:
            raise InvalidTransition(f"a {self.status} job cannot be dispatched")
        if attempt != self.attempt + 1:
            raise InvalidTransition(f"attempt {attempt} does not follow attempt {self.attempt}")
        if attempt > MAX_ATTEMPTS:
            raise InvalidTransition(f"the job has used its {MAX_ATTEMPTS} attempts")
        self._dispatched(attempt=attempt, worker_id=worker_id, timestamp=at)
        return True

    def start(self, *, attempt: int, worker_id: str, gpu: str, at: datetime) -> bool:
        require_aware(at)
        if not self.is_current(attempt):
            return False  # a stale or repeated report
        if self.status == JobStatus.RUNNING.value:
            return False
        self._started(attempt=attempt, worker_id=worker_id, gpu=gpu, timestamp=at)
        return True

    def request_cancel(self, at: datetime) -> bool:
        """Mark a running job for cancellation; the worker stops it within a step."""
        require_aware(at)
        if self.is_terminal or self.cancel_requested:
            return False
        self._cancel_requested(timestamp=at)
        return True

    def complete(
        self,
        *,
        attempt: int,
        gpu_ms: int,
        cuda_ms: int | None,
        charged_mc: int,
        images: list[ImageRecord],
        at: datetime,
    ) -> None:
        self._require_current(attempt)
        self._completed(
            attempt=attempt,
            gpu_ms=gpu_ms,
            cuda_ms=cuda_ms,
            charged_mc=charged_mc,
            images=images,
            timestamp=at,
        )

    def fail_attempt(self, *, attempt: int, reason: str, at: datetime) -> None:
        """A retryable failure: back to the queue with the hold kept."""
        self._require_current(attempt)
        if attempt >= MAX_ATTEMPTS:
            raise InvalidTransition("no attempts left; fail the job")
        self._attempt_failed(attempt=attempt, reason=reason, timestamp=at)

    def fail(
        self,
        *,
        attempt: int,
        reason: str,
        retryable: bool,
        fault: Fault,
        gpu_ms: int,
        charged_mc: int,
        at: datetime,
    ) -> None:
        if attempt != self.attempt or self.is_terminal:
            raise InvalidTransition(f"attempt {attempt} is not the job's current attempt")
        self._failed(
            attempt=attempt,
            reason=reason,
            retryable=retryable,
            fault=fault.value,
            gpu_ms=gpu_ms,
            charged_mc=charged_mc,
            timestamp=at,
        )

    def cancel(self, *, gpu_ms: int, charged_mc: int, at: datetime) -> None:
        if self.is_terminal:
            raise InvalidTransition(f"a {self.status} job cannot be cancelled")
        self._cancelled(
            after_start=self.status == JobStatus.RUNNING.value,
            gpu_ms=gpu_ms,
            charged_mc=charged_mc,
            timestamp=at,
        )

    def refund(self, *, amount_mc: int, reason: str, actor: str, at: datetime) -> None:
        if self.refunded_mc:
            raise InvalidTransition("the job was refunded already")
        self._refunded(amount_mc=amount_mc, reason=reason, actor=actor, timestamp=at)

    def delete_image(self, *, name: str, user_id: str, at: datetime) -> bool:
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

    def _require(self, status: JobStatus) -> None:
        if self.status != status.value:
            raise InvalidTransition(f"the job is {self.status}, not {status.value}")

    def _require_current(self, attempt: int) -> None:
        if not self.is_current(attempt):
            raise InvalidTransition(f"attempt {attempt} is not the job's current attempt")

    # ------------------------------------------------------------- event bodies (mutate only)

    @event(Accepted)
    def _accepted(
        self, hold_mc: int, budget_ms: int, estimate_ms: int, timestamp: datetime
    ) -> None:
        self.status = JobStatus.ACCEPTED.value
        self.hold_mc = hold_mc
        self.budget_ms = budget_ms
        self.estimate_ms = estimate_ms

    @event(Rejected)
    def _rejected(self, reason: str, detail: str, timestamp: datetime) -> None:
        self.status = JobStatus.REJECTED.value
        self.rejection = reason
        self.rejection_detail = detail

    @event(Dispatched)
    def _dispatched(self, attempt: int, worker_id: str, timestamp: datetime) -> None:
        self.status = JobStatus.DISPATCHED.value
        self.attempt = attempt
        self.worker_id = worker_id

    @event(Started)
    def _started(self, attempt: int, worker_id: str, gpu: str, timestamp: datetime) -> None:
        self.status = JobStatus.RUNNING.value
        self.worker_id = worker_id

    @event(CancelRequested)
    def _cancel_requested(self, timestamp: datetime) -> None:
        self.cancel_requested = True

    @event(Completed)
    def _completed(
        self,
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

    @event(AttemptFailed)
    def _attempt_failed(self, attempt: int, reason: str, timestamp: datetime) -> None:
        self.status = JobStatus.ACCEPTED.value
        self.failure = reason

    @event(Failed)
    def _failed(
        self,
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

    @event(Cancelled)
    def _cancelled(
        self, after_start: bool, gpu_ms: int, charged_mc: int, timestamp: datetime
    ) -> None:
        self.status = JobStatus.CANCELLED.value
        self.gpu_ms = gpu_ms
        self.charged_mc = charged_mc

    @event(Refunded)
    def _refunded(self, amount_mc: int, reason: str, actor: str, timestamp: datetime) -> None:
        self.refunded_mc = amount_mc

    @event(ImageDeleted)
    def _image_deleted(self, name: str, key: str, thumbnail_key: str, timestamp: datetime) -> None:
        self.deleted_images[name] = timestamp

"""GenerationJob: one text-to-image request from submission to its single billing outcome.

The lifecycle is stated once, in domain/job_lifecycle.py: the table of what may follow what
(every command here that changes the status asks it first), the attempt cap, and the
dead-letter decision the commands that give a job up return. Reports name their attempt; a
report of any attempt but the current one is stale and changes nothing, so an abandoned
attempt can never be billed later. The owner's word on the images is domain/job_images.py,
the events and their effects (the stored shape) domain/job_events.py, the parameters a job
asks for domain/parameters.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids, job_images, personal_data
from domain import job_events as events
from domain.errors import IdempotencyConflict, InvalidTransition
from domain.job_events import ImageRecord, JobStatus, WebhookTarget
from domain.job_lifecycle import (
    MAX_ATTEMPTS,
    TERMINAL,
    DeadLetterDecision,
    Fault,
    has_attempts_left,
    require_move,
)
from domain.job_webhooks import JobSubmission
from domain.parameters import MAX_SEED, JobParameters
from domain.personal_data import Sealer
from domain.units import require_aware

# How long a key's job is the answer to a submission with that key (as Stripe keeps a key's
# result for 24 hours); after that the same key submits a new job, under the key's next use.
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)
# A key's uses looked through before one is free (each one a read): a key reused past expiry
# every day for almost three years; then the key is refused (IdempotencyConflict).
MAX_KEY_USES = 1000


def seed_for(job_id: UUID, requested: int | None) -> int:
    """The seed a job runs with: the requested one, or one derived from the job id, so every
    attempt of a job produces the same image."""
    return requested if requested is not None else job_id.int & MAX_SEED


class GenerationJob(Aggregate):
    TOPIC = "pinksea:GenerationJob"

    # The events, bound here: the library makes each the job's own event class.
    Created = events.Created
    Submitted = events.Submitted
    Accepted = events.Accepted
    Rejected = events.Rejected
    Dispatched = events.Dispatched
    Started = events.Started
    CancelRequested = events.CancelRequested
    Completed = events.Completed
    AttemptFailed = events.AttemptFailed
    Failed = events.Failed
    Cancelled = events.Cancelled
    Refunded = events.Refunded
    ImageDeleted = events.ImageDeleted
    ImageFiled = events.ImageFiled
    ImageStarred = events.ImageStarred
    ImageUnstarred = events.ImageUnstarred
    ImageMarkedIntermediate = events.ImageMarkedIntermediate
    ImageUnmarkedIntermediate = events.ImageUnmarkedIntermediate

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
        webhook: WebhookTarget | None = None,
    ) -> None:
        self.user_id = user_id
        self.webhook = webhook
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
        self.image_boards: dict[str, str] = {}  # image name -> the board it was last filed on
        self.starred_images: set[str] = set()  # names of the images starred now
        self.intermediate_images: set[str] = set()  # names of the images marked intermediate
        self.failure: str | None = None

    @classmethod
    def submit(
        cls,
        *,
        user_id: str,
        idempotency_key: str,
        params: JobParameters,
        tier: str,
        at: datetime,
        use: int = 0,
        sealer: Sealer | None = None,
    ) -> GenerationJob:
        """A new job for ``idempotency_key``'s ``use``-th job (0: the key's first; a later use
        follows the expiry of the one before, ``answers_key``). ``sealer``: the user's data
        key, which seals the prompts the event records (domain/personal_data.py); None only
        for tools and tests that keep plaintext."""
        require_aware(at)
        assert 0 <= use < MAX_KEY_USES
        params.check()
        job_uuid = ids.job_id(user_id, idempotency_key, use)
        # Only a submission (the API's body) carries a webhook; other callers pass parameters.
        webhook = params.webhook_target() if isinstance(params, JobSubmission) else None
        data = params.as_event_data()
        # The library's constructor for a given id: create_id knows only a key's first use.
        return cls._create(
            cls.Submitted,
            id=job_uuid,
            user_id=user_id,
            idempotency_key=idempotency_key,
            parameters=data if sealer is None else personal_data.sealed(data, sealer),
            seed=seed_for(job_uuid, params.seed),
            fingerprint=params.fingerprint(sealer),
            tier=tier,
            timestamp=at,
            webhook=webhook,
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

    def answers_key(self, at: datetime) -> bool:
        """Whether this job is still its Idempotency-Key's answer at ``at``: accepted (a
        rejection recorded before rejections were answered unsaved is not an answer) and
        submitted less than IDEMPOTENCY_KEY_TTL before."""
        require_aware(at)
        return self.status != JobStatus.REJECTED.value and at < self.submitted_at + (
            IDEMPOTENCY_KEY_TTL
        )

    def ensure_same_request(self, params: JobParameters, sealer: Sealer | None = None) -> None:
        """Raise IdempotencyConflict unless ``params`` are this job's. A sealed job's
        fingerprint is keyed (``sealer``: the user's key); one submitted before sealing is not."""
        keyed = sealer if personal_data.is_sealed_parameters(self.parameters) else None
        if params.fingerprint(keyed) != self.fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request; use a new key"
            )

    def is_current(self, attempt: int) -> bool:
        return attempt == self.attempt and self.status in (
            JobStatus.DISPATCHED.value,
            JobStatus.RUNNING.value,
        )

    def retries_after(self, attempt: int, *, retryable: bool) -> bool:
        """Whether a failure of ``attempt`` puts the job back in the queue, hold kept, rather
        than ending it."""
        return retryable and has_attempts_left(attempt)

    # ---------------------------------------------------------------------------- commands

    def accept(self, *, hold_mc: int, estimate_ms: int, budget_ms: int, at: datetime) -> None:
        require_move(self.status, JobStatus.ACCEPTED)
        self._accepted(hold_mc=hold_mc, budget_ms=budget_ms, estimate_ms=estimate_ms, timestamp=at)

    def dispatch(self, *, attempt: int, worker_id: str, at: datetime) -> bool:
        """Record that the scheduler handed attempt ``attempt`` to a worker. A new attempt may
        replace one whose worker went silent (lease expired)."""
        require_aware(at)
        if attempt == self.attempt and self.status != JobStatus.ACCEPTED.value:
            return False  # this dispatch was recorded already
        require_move(self.status, JobStatus.DISPATCHED)
        if attempt != self.attempt + 1:
            raise InvalidTransition(f"attempt {attempt} does not follow attempt {self.attempt}")
        if not has_attempts_left(self.attempt):
            raise InvalidTransition(f"the job has used its {MAX_ATTEMPTS} attempts")
        self._dispatched(attempt=attempt, worker_id=worker_id, timestamp=at)
        return True

    def start(self, *, attempt: int, worker_id: str, gpu: str, at: datetime) -> bool:
        require_aware(at)
        if not self.is_current(attempt) or self.status == JobStatus.RUNNING.value:
            return False  # a stale or repeated report
        require_move(self.status, JobStatus.RUNNING)
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
        require_move(self.status, JobStatus.COMPLETED)
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
        if not has_attempts_left(attempt):
            raise InvalidTransition("no attempts left; fail the job")
        require_move(self.status, JobStatus.ACCEPTED)
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
    ) -> DeadLetterDecision | None:
        """The run failed for good. A retryable failure gets here only with no attempts left:
        the job is dead-lettered (the decision is returned)."""
        if attempt != self.attempt or self.is_terminal:
            raise InvalidTransition(f"attempt {attempt} is not the job's current attempt")
        require_move(self.status, JobStatus.FAILED)
        self._failed(
            attempt=attempt,
            reason=reason,
            retryable=retryable,
            fault=fault.value,
            gpu_ms=gpu_ms,
            charged_mc=charged_mc,
            timestamp=at,
        )
        if retryable and not has_attempts_left(attempt):
            return DeadLetterDecision(attempts=attempt, reason=reason)
        return None

    def give_up(self, *, cause: str, at: datetime) -> DeadLetterDecision:
        """Fail the job for want of attempts (never billed: the caller voids the hold); the
        dead-letter decision carries ``cause``."""
        require_move(self.status, JobStatus.FAILED)
        self._failed(
            attempt=self.attempt,
            reason=f"gave up after {MAX_ATTEMPTS} attempts",
            retryable=False,
            fault=Fault.PLATFORM.value,
            gpu_ms=0,
            charged_mc=0,
            timestamp=at,
        )
        return DeadLetterDecision(attempts=self.attempt, reason=cause)

    def cancel(self, *, gpu_ms: int, charged_mc: int, at: datetime) -> None:
        require_move(self.status, JobStatus.CANCELLED)
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

    # The owner's word on the images (domain/job_images.py).
    delete_image = job_images.delete_image
    has_image = job_images.has_image
    file_image = job_images.file_image
    flag_image = job_images.flag_image
    image_flags = job_images.image_flags

    def _require_current(self, attempt: int) -> None:
        if not self.is_current(attempt):
            raise InvalidTransition(f"attempt {attempt} is not the job's current attempt")

    # ------------------------------------------------------------- event bodies (mutate only)
    # Calling one triggers its event; its body, the event's effect, is beside the event in
    # domain/job_events.py (and runs again on every replay).

    _accepted = event(Accepted)(events.accepted)
    _rejected = event(Rejected)(events.rejected)  # stored history only: nothing rejects now
    _dispatched = event(Dispatched)(events.dispatched)
    _started = event(Started)(events.started)
    _cancel_requested = event(CancelRequested)(events.cancel_requested)
    _completed = event(Completed)(events.completed)
    _attempt_failed = event(AttemptFailed)(events.attempt_failed)
    _failed = event(Failed)(events.failed)
    _cancelled = event(Cancelled)(events.cancelled)
    _refunded = event(Refunded)(events.refunded)
    _image_deleted = event(ImageDeleted)(events.image_deleted)
    _image_filed = event(ImageFiled)(events.image_filed)
    _image_starred = event(ImageStarred)(events.image_starred)
    _image_unstarred = event(ImageUnstarred)(events.image_unstarred)
    _image_marked_intermediate = event(ImageMarkedIntermediate)(events.image_marked_intermediate)
    _image_unmarked = event(ImageUnmarkedIntermediate)(events.image_unmarked_intermediate)


__all__ = [
    "IDEMPOTENCY_KEY_TTL",
    "MAX_KEY_USES",
    "GenerationJob",
    "ImageRecord",
    "JobParameters",
    "JobStatus",
    "seed_for",
]

"""A job's lifecycle, stated once: what may follow what, how many attempts a job gets, and the
outcomes a command hands back.

Three processes act on a job (the API, the scheduler, the settler) and each used to work out
for itself when a job was finished, retried or given up:

- ``LIFECYCLE`` is the table of the statuses a job may move to from each status; every command
  of ``GenerationJob`` (domain/jobs.py) that changes the status asks it (``require_move``, the
  one check) before raising its event. Effects never check: a stored event is history,
  replayed as it was.
- ``MAX_ATTEMPTS`` is the attempt cap, and ``has_attempts_left`` the only test against it.
- The commands that end a job for want of attempts return a ``DeadLetterDecision``; the
  application's commands hand it back in their results, and the scheduler and the settler
  publish what they are given, deciding nothing themselves.
- ``Fault`` says who a failure is down to (platform failures are never billed);
  ``RejectionReason`` why a submission was refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from domain.errors import InvalidTransition
from domain.job_events import JobStatus

_S = JobStatus
# From each status, the statuses a job may move to. A re-dispatch (the worker's lease expired)
# moves a dispatched or running job to dispatched again; a retryable failure puts it back to
# accepted, its hold kept; giving up fails it from wherever it waits. A submitted job is never
# stored: the submission saves it accepted, or saves nothing when admission refuses it (so the
# refused request, retried with its Idempotency-Key, is decided again). Rejected jobs exist only
# from before that: stored history, terminal, and never an Idempotency-Key's answer.
LIFECYCLE: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        _S.SUBMITTED: frozenset({_S.ACCEPTED}),
        _S.ACCEPTED: frozenset({_S.DISPATCHED, _S.FAILED, _S.CANCELLED}),
        _S.DISPATCHED: frozenset(
            {_S.DISPATCHED, _S.RUNNING, _S.ACCEPTED, _S.COMPLETED, _S.FAILED, _S.CANCELLED}
        ),
        _S.RUNNING: frozenset({_S.DISPATCHED, _S.ACCEPTED, _S.COMPLETED, _S.FAILED, _S.CANCELLED}),
        _S.REJECTED: frozenset(),
        _S.COMPLETED: frozenset(),
        _S.FAILED: frozenset(),
        _S.CANCELLED: frozenset(),
    }
)
# The statuses nothing follows (their values: read models and the API hold plain strings).
TERMINAL: frozenset[str] = frozenset(s.value for s, moves in LIFECYCLE.items() if not moves)

MAX_ATTEMPTS = 3


def require_move(status: str, to: JobStatus) -> None:
    """The one check of the lifecycle table: raise InvalidTransition unless a job in
    ``status`` may become ``to``."""
    if to not in LIFECYCLE[JobStatus(status)]:
        raise InvalidTransition(f"a {status} job cannot become {to.value}")


def has_attempts_left(attempt: int) -> bool:
    """Whether a job whose attempt ``attempt`` was lost or failed may run another one.
    Attempts number dispatches: a lost one counts even if it never started (one prefetched to
    a worker that died with it, issue 18), as the cap is what bounds a job that kills its
    worker before it starts (in its model load, before ``Started``)."""
    return attempt < MAX_ATTEMPTS


@dataclass(frozen=True)
class DeadLetterDecision:
    """The job ran out of attempts on a platform problem and was failed for good: whoever
    issued the command publishes it on the dead-letter topic (an operator looks at it)."""

    attempts: int
    reason: str


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

"""What commands return.

Every result carries ``position``: the notification id of what the command saved, or the newest
one when it saved nothing, a safe read-your-writes target for the caller's next query. The
``command`` decorator fills it in (domain/commands/store.py); a command body returns its
result without it. Results that end a job may carry the lifecycle's dead-letter decision
(domain/jobs.py), which the workflow that issued the command publishes as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from domain.job_lifecycle import DeadLetterDecision


@dataclass(frozen=True, kw_only=True)
class Result:
    position: int = 0  # set by @command; 0 only on a result no command returned


@dataclass(frozen=True)
class CommandResult(Result):
    changed: bool  # False: a repetition of an earlier command, nothing new recorded


@dataclass(frozen=True)
class SubmitResult(Result):
    job_id: UUID | None  # None: refused (status rejected), and nothing was saved
    status: str
    hold_mc: int
    budget_ms: int
    rejection: str | None
    detail: str | None
    created: bool  # False: a replay (the key's job answers again), or a refusal


@dataclass(frozen=True)
class AccountStatusResult(Result):
    changed: bool  # False: the account was in that state already
    deactivated: bool
    version: int  # the account's version at which ``deactivated`` holds (orders the API's flags)
    cancelled_jobs: tuple[UUID, ...] = ()  # queued jobs cancelled, their holds voided
    stopping_jobs: tuple[UUID, ...] = ()  # running jobs asked to stop (GPU time used is billed)


@dataclass(frozen=True)
class SettlementResult(Result):
    applied: bool  # False: a duplicate or stale report, nothing changed
    job_status: str
    charged_mc: int
    dead_letter: DeadLetterDecision | None = None  # the job was given up: publish it


@dataclass(frozen=True)
class DispatchResult(Result):
    changed: bool  # False: this dispatch was recorded before, or the job is finished
    send: bool  # the job's current attempt is this one, on this worker: send its Dispatch
    dead_letter: DeadLetterDecision | None = None  # past the attempt cap the job was given up

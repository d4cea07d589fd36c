"""The commands on a job and, in the same save, its account: a hold never exists without its
job, nor a settled job without its settlement.

``JobCommands`` is a job's commands: its submission (submissions.py), the owner's word on its
images (images.py), and here its runs, from dispatch to settlement, its cancel and its refund.
The workflows act on what these return. The scheduler sends a Dispatch when the result says
``send``; the scheduler and the settler publish a dead letter when the result carries one.
When to retry, when to give up and who is billed is the lifecycle's (domain/job_lifecycle.py)
and these commands': a workflow passes on what it saw (an attempt lost, a report) and nothing
else.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.commands.images import ImageCommands
from domain.commands.results import CommandResult, DispatchResult, SettlementResult
from domain.commands.store import command
from domain.commands.submissions import SubmissionCommands
from domain.credits import CreditAccount
from domain.errors import InvalidTransition
from domain.estimation import charge_for
from domain.job_lifecycle import MAX_ATTEMPTS, DeadLetterDecision, Fault, has_attempts_left
from domain.jobs import GenerationJob, ImageRecord, JobStatus
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier


class JobCommands(SubmissionCommands, ImageCommands):
    @command
    def cancel_job(self, job_id: UUID, at: datetime) -> CommandResult:
        """The user's cancel. Before start: cancelled now and the hold voided. Running: the
        worker is asked to stop and reports the GPU time used, which is billed."""
        job = self.job(job_id)
        if job.is_terminal:
            return CommandResult(False)
        if job.status == JobStatus.RUNNING.value:
            changed = job.request_cancel(at)
            self.save(job)
            return CommandResult(changed)
        account = self.account(job.user_id)
        stop(job, account, reason="cancelled before start", at=at)
        self.save(job, account)
        return CommandResult(True)

    @command
    def record_dispatch(
        self, job_id: UUID, *, attempt: int, worker_id: str, at: datetime
    ) -> DispatchResult:
        """The scheduler hands attempt ``attempt`` to a worker. An attempt past the cap gives
        the job up instead (platform fault, hold voided) and hands back the dead letter."""
        job = self.job(job_id)
        if job.is_terminal:
            return DispatchResult(False, send=False)
        if not has_attempts_left(attempt - 1):  # the attempts before it used the cap
            account = self.account(job.user_id)
            dead = _give_up(job, account, cause=f"gave up after {MAX_ATTEMPTS} attempts", at=at)
            self.save(job, account)
            return DispatchResult(True, send=False, dead_letter=dead)
        changed = job.dispatch(attempt=attempt, worker_id=worker_id, at=at)
        self.save(job)
        # Unchanged and still ours: recorded before, never sent (a restart between the two).
        return DispatchResult(changed, send=job.attempt == attempt and job.worker_id == worker_id)

    @command
    def abandon_job(self, job_id: UUID, *, attempt: int, at: datetime) -> SettlementResult:
        """The worker of the job's last attempt was lost (its lease expired): the job is given
        up, its hold voided, and the dead letter handed back. A stale attempt or a finished
        job changes nothing; a lost attempt with attempts left is the next dispatch's."""
        job = self.job(job_id)
        if not job.is_current(attempt):
            return _unchanged(job)
        if has_attempts_left(attempt):
            raise InvalidTransition(f"attempt {attempt} was lost; dispatch the next attempt")
        account = self.account(job.user_id)
        dead = _give_up(job, account, cause="workers lost on every attempt", at=at)
        self.save(job, account)
        return SettlementResult(True, job.status, 0, dead_letter=dead)

    @command
    def record_start(
        self, job_id: UUID, *, attempt: int, worker_id: str, gpu: str, at: datetime
    ) -> CommandResult:
        job = self.job(job_id)
        if job.is_terminal or not job.start(attempt=attempt, worker_id=worker_id, gpu=gpu, at=at):
            return CommandResult(False)
        self.save(job)
        return CommandResult(True)

    @command
    def complete_job(
        self,
        job_id: UUID,
        *,
        attempt: int,
        gpu_ms: int,
        cuda_ms: int | None,
        images: list[ImageRecord],
        at: datetime,
    ) -> SettlementResult:
        """A finished run: the job completes and its hold settles at the measured GPU time,
        atomically. Duplicate, late and stale-attempt reports change nothing."""
        job = self.job(job_id)
        if not job.is_current(attempt):
            return _unchanged(job)
        account = self.account(job.user_id)
        charged = _settle(account, job, gpu_ms, at, cuda_ms=cuda_ms)
        job.complete(
            attempt=attempt,
            gpu_ms=gpu_ms,
            cuda_ms=cuda_ms,
            charged_mc=charged,
            images=images,
            at=at,
        )
        _rearm_low_balance(account, at)
        self.save(job, account)
        return SettlementResult(True, job.status, charged)

    @command
    def fail_job(
        self,
        job_id: UUID,
        *,
        attempt: int,
        reason: str,
        retryable: bool,
        fault: Fault,
        gpu_ms: int,
        at: datetime,
    ) -> SettlementResult:
        """A failed run. Retryable with attempts left: back to the queue, hold kept. Otherwise
        terminal: a platform fault voids the hold; a user fault bills the GPU time used; a
        retryable failure of the last attempt is dead-lettered."""
        job = self.job(job_id)
        if not job.is_current(attempt):
            return _unchanged(job)
        if job.retries_after(attempt, retryable=retryable):
            job.fail_attempt(attempt=attempt, reason=reason, at=at)
            self.save(job)
            return SettlementResult(True, job.status, 0)
        account = self.account(job.user_id)
        if fault is Fault.USER:
            charged = _settle(account, job, gpu_ms, at)
        else:
            charged = 0
            account.release(hold_id=job.hold_id, reason=f"platform failure: {reason}", at=at)
        dead = job.fail(
            attempt=attempt,
            reason=reason,
            retryable=retryable,
            fault=fault,
            gpu_ms=gpu_ms,
            charged_mc=charged,
            at=at,
        )
        _rearm_low_balance(account, at)
        self.save(job, account)
        return SettlementResult(True, job.status, charged, dead_letter=dead)

    @command
    def record_cancelled_run(
        self, job_id: UUID, *, attempt: int, gpu_ms: int, at: datetime
    ) -> SettlementResult:
        """The worker stopped a running job the user cancelled: bill the GPU time used."""
        job = self.job(job_id)
        if not job.is_current(attempt):
            return _unchanged(job)
        account = self.account(job.user_id)
        charged = _settle(account, job, gpu_ms, at)
        job.cancel(gpu_ms=gpu_ms, charged_mc=charged, at=at)
        _rearm_low_balance(account, at)
        self.save(job, account)
        return SettlementResult(True, job.status, charged)

    @command
    def refund_job(self, job_id: UUID, *, reason: str, actor: str, at: datetime) -> CommandResult:
        """Give a job's charge back to the lots it was drawn from (admin action)."""
        job = self.job(job_id)
        if job.refunded_mc:
            return CommandResult(False)
        if job.charged_mc == 0:
            raise InvalidTransition("the job was not charged; there is nothing to refund")
        account = self.account(job.user_id)
        amount = account.refund(hold_id=job.hold_id, reason=reason, actor=actor, at=at)
        job.refund(amount_mc=amount, reason=reason, actor=actor, at=at)
        self.save(job, account)
        return CommandResult(True)


def stop(job: GenerationJob, account: CreditAccount, *, reason: str, at: datetime) -> bool:
    """Cancel an unfinished job. Before it runs: cancelled now, its hold voided. Running: the
    worker is asked to stop within a step; its report bills the GPU time used. False when
    there is nothing more to do (finished, or asked to stop already)."""
    if job.is_terminal:
        return False
    if job.status == JobStatus.RUNNING.value:
        return job.request_cancel(at)
    job.cancel(gpu_ms=0, charged_mc=0, at=at)
    account.release(hold_id=job.hold_id, reason=reason, at=at)
    assert job.is_terminal
    return True


def _give_up(
    job: GenerationJob, account: CreditAccount, *, cause: str, at: datetime
) -> DeadLetterDecision:
    dead = job.give_up(cause=cause, at=at)
    account.release(hold_id=job.hold_id, reason="attempts exhausted", at=at)
    return dead


def _unchanged(job: GenerationJob) -> SettlementResult:
    return SettlementResult(False, job.status, job.charged_mc)


def _rearm_low_balance(account: CreditAccount, at: datetime) -> None:
    """Settlements give credit back: re-arm a raised warning with the threshold it used (no
    subscription read on the billing hot path)."""
    if account.low_balance:
        account.check_low_balance(account.low_balance_threshold_mc, at)


def _settle(
    account: CreditAccount,
    job: GenerationJob,
    gpu_ms: int,
    at: datetime,
    *,
    cuda_ms: int | None = None,
) -> int:
    """Settle the job's hold at its billed GPU time; returns the charge. The worker stops a job
    at its budget, within one step; time past the budget is the platform's, so a job never
    costs more than its hold."""
    tier = GpuTier(job.tier)
    billed_ms = min(gpu_ms, job.budget_ms)
    charged = charge_for(billed_ms, tier)
    account.settle(
        hold_id=job.hold_id,
        charged_mc=charged,
        gpu_ms=billed_ms,
        rate_mc_per_ms=RATE_MC_PER_GPU_MS[tier],
        tier=job.tier,
        cuda_ms=cuda_ms,
        at=at,
    )
    return charged

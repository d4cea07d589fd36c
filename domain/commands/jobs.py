"""The commands on a job and, in the same save, its account: a hold never exists without its
job, nor a settled job without its settlement.

The workflows act on what these return. The scheduler sends a Dispatch when the result says
``send``; the scheduler and the settler publish a dead letter when the result carries one.
When to retry, when to give up and who is billed is the lifecycle's (domain/jobs.py) and
these commands': a workflow passes on what it saw (an attempt lost, a report) and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain import ids
from domain.boards import Board
from domain.commands.admission import Learned, Refusal, admit, quote
from domain.commands.results import CommandResult, DispatchResult, SettlementResult, SubmitResult
from domain.commands.store import CommandStore, command
from domain.credits import CreditAccount
from domain.errors import IdempotencyConflict, InvalidTransition
from domain.estimation import charge_for
from domain.job_lifecycle import MAX_ATTEMPTS, DeadLetterDecision, Fault, has_attempts_left
from domain.jobs import MAX_KEY_USES, GenerationJob, ImageRecord, JobParameters, JobStatus
from domain.personal_data import Sealer
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier


class JobCommands(CommandStore):
    @command
    def submit_job(
        self,
        user_id: str,
        *,
        idempotency_key: str,
        params: JobParameters,
        at: datetime,
        storage_used_bytes: int = 0,
        learned: Learned | None = None,
        sealer: Sealer | None = None,
    ) -> SubmitResult:
        """Create the job and hold its credits in one save, or answer why not, saving nothing.
        ``learned``: what settled jobs like this one cost per tier, for the estimate.
        ``sealer``: the user's data key; the job's event records its prompts sealed with it
        and a keyed fingerprint (domain/personal_data.py). The API always passes it.

        As Stripe keeps a key's result only once work started, a key stores only an accepted
        job: a refused submission (credit, plan, queue limit) leaves no job and no result, so
        its retry with the same key, after a top-up, is decided again. A key's job answers for
        it for IDEMPOTENCY_KEY_TTL; the same key later submits a new job (its next use).
        Invalid parameters raise InvalidParameters, a different body under a live key
        IdempotencyConflict; neither records anything.
        """
        refusal, job, account = self._admission(
            user_id,
            idempotency_key,
            params,
            at,
            storage_used_bytes,
            use=0,
            learned=learned,
            sealer=sealer,
        )
        conflict = None
        if job is not None:
            try:
                # Optimistic: most keys are new, so don't read the key's job first; the job's
                # first event conflicts on save if the key was used before.
                self.save(job, account)
                return _submitted(job, created=True)
            except IntegrityError as e:
                conflict = e  # the key was used before, or the account changed under us
        existing, use = self._key_use(user_id, idempotency_key, at)
        if existing is not None:
            existing.ensure_same_request(params, sealer)
            return _submitted(existing, created=False)
        if conflict is not None and use == 0:
            raise conflict  # the account changed: @command reads it again and decides again
        if conflict is not None:  # the key's job before expired: a new one, its next use
            refusal, job, account = self._admission(
                user_id,
                idempotency_key,
                params,
                at,
                storage_used_bytes,
                use=use,
                learned=learned,
                sealer=sealer,
            )
            if job is not None:
                self.save(job, account)  # a conflict here: @command decides again
                return _submitted(job, created=True)
        assert refusal is not None
        return _refused(refusal)

    def _admission(
        self,
        user_id: str,
        idempotency_key: str,
        params: JobParameters,
        at: datetime,
        storage_used_bytes: int,
        *,
        use: int,
        learned: Learned | None = None,
        sealer: Sealer | None = None,
    ) -> tuple[Refusal | None, GenerationJob | None, CreditAccount]:
        """The job of ``idempotency_key``'s ``use``, accepted with its hold on the account (both
        unsaved), or the refusal and no job. The quote's own checks decide (admission.quote):
        a deactivated account or invalid parameters raise."""
        sub = self.subscription(user_id)
        account = self.account(user_id)
        verdict = quote(sub, account, params, storage_used_bytes, at, learned)
        if verdict.refusal is not None:
            return verdict.refusal, None, account
        job = GenerationJob.submit(
            user_id=user_id,
            idempotency_key=idempotency_key,
            params=params,
            tier=verdict.tier.value,
            at=at,
            use=use,
            sealer=sealer,
        )
        refusal = admit(job, account, verdict, at)
        if refusal is not None:
            return refusal, None, account
        account.check_low_balance(sub.plan.low_balance_threshold_mc, at)
        return None, job, account

    def _key_use(
        self, user_id: str, idempotency_key: str, at: datetime
    ) -> tuple[GenerationJob | None, int]:
        """The key's job that still answers for it at ``at`` and its use, or None and the
        first use that names no job yet (uses are taken in order, each after the one before
        expired)."""
        for use in range(MAX_KEY_USES):
            job = self.find(ids.job_id(user_id, idempotency_key, use))
            if job is None:
                return None, use
            assert isinstance(job, GenerationJob)
            if job.answers_key(at):
                return job, use
        raise IdempotencyConflict(
            f"this Idempotency-Key has named {MAX_KEY_USES} jobs, the most one may; use a new key"
        )

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

    @command
    def delete_image(self, job_id: UUID, *, user_id: str, name: str, at: datetime) -> CommandResult:
        """The owner deletes one of a job's images (its S3 objects are the caller's to remove).
        A repeated delete changes nothing; an unknown job or image, or another user's, is
        NotFound."""
        job = self.job(job_id)
        if not job.delete_image(name=name, user_id=user_id, at=at):
            return CommandResult(False)
        # A deleted image leaves its board (it would count against the board's bound).
        pointer = job.image_boards.get(name)
        board = self.find(UUID(pointer)) if pointer is not None else None
        if isinstance(board, Board) and board.holds(name):
            board.remove_image(name, at)
            self.save(job, board)
        else:
            self.save(job)
        return CommandResult(True)

    @command
    def flag_image(
        self,
        job_id: UUID,
        *,
        user_id: str,
        name: str,
        starred: bool | None = None,
        is_intermediate: bool | None = None,
        at: datetime,
    ) -> CommandResult:
        """The owner stars an image or marks it intermediate (None: that flag stays); asking
        for the flags it has changes nothing. An unknown job or image, a deleted one or
        another user's, is NotFound."""
        job = self.job(job_id)
        changed = job.flag_image(
            name=name, user_id=user_id, starred=starred, is_intermediate=is_intermediate, at=at
        )
        if changed:
            self.save(job)
        return CommandResult(changed)


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


def _submitted(job: GenerationJob, *, created: bool) -> SubmitResult:
    assert job.status != JobStatus.REJECTED.value, "a rejection is never a key's answer"
    return SubmitResult(
        job_id=job.id,
        status=job.status,
        hold_mc=job.hold_mc,
        budget_ms=job.budget_ms,
        rejection=None,
        detail=None,
        created=created,
    )


def _refused(refusal: Refusal) -> SubmitResult:
    """The answer to a refused submission: no job, nothing saved."""
    reason, detail = refusal
    return SubmitResult(
        job_id=None,
        status=JobStatus.REJECTED.value,
        hold_mc=0,
        budget_ms=0,
        rejection=reason.value,
        detail=detail,
        created=False,
    )

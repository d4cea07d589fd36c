"""The submission of a job: the job and the hold on its account created in one save, or the
refusal, saving nothing.

A key stores only an accepted job (a refused submission is decided again on its retry), and a
key's job answers for it for IDEMPOTENCY_KEY_TTL (domain/jobs.py); the plan's say is
admission.py's, the estimate domain/estimation.py's.
"""

from __future__ import annotations

from datetime import datetime

from eventsourcing.persistence import IntegrityError

from domain import ids
from domain.commands.admission import Learned, Refusal, admit, quote
from domain.commands.results import SubmitResult
from domain.commands.store import CommandStore, command
from domain.credits import CreditAccount
from domain.errors import IdempotencyConflict
from domain.jobs import MAX_KEY_USES, GenerationJob, JobParameters, JobStatus
from domain.personal_data import Sealer


class SubmissionCommands(CommandStore):
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

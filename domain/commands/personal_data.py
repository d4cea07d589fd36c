"""The record of a user's erasure of personal data (domain/personal_data.py).

The erasure itself happens outside the event store: the user's data key is destroyed (and
with it every prompt sealed under it), their images' and uploads' objects are deleted. This
command records that it happened, how much went with it and who asked, so the erasure is as
auditable as any other fact, without a word of what was erased.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain.commands.jobs import stop
from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore, command
from domain.jobs import JobStatus
from domain.personal_data import PersonalData, personal_data_id


@dataclass(frozen=True)
class StoppedJobs(Result):
    cancelled: tuple[UUID, ...]  # queued jobs cancelled, their holds voided
    stopping: tuple[UUID, ...]  # running jobs asked to stop (the GPU time used is billed)


class PersonalDataCommands(CommandStore):
    @command
    def stop_jobs_for_erasure(self, user_id: str, *, at: datetime) -> StoppedJobs:
        """Before a user's key goes: every unfinished job of theirs is cancelled as their own
        cancel would, so none runs (and bills) on a prompt that reads as erased. One save."""
        account = self.account(user_id)
        jobs = [self.job(UUID(hold.job_id)) for hold in account.open_holds]
        cancelled: list[UUID] = []
        stopping: list[UUID] = []
        for job in jobs:  # at most the account's open holds: its plan's concurrent jobs
            running = job.status == JobStatus.RUNNING.value
            if stop(job, account, reason="personal data erased", at=at):
                (stopping if running else cancelled).append(job.id)
        if cancelled or stopping:
            self.save(account, *jobs)
        assert all(j.is_terminal or j.cancel_requested for j in jobs)
        return StoppedJobs(cancelled=tuple(cancelled), stopping=tuple(stopping))

    @command
    def record_erasure(
        self,
        user_id: str,
        *,
        actor: str,
        key_destroyed: bool,
        images: int,
        uploads: int,
        models: int,
        at: datetime,
    ) -> CommandResult:
        """Record an erasure of ``user_id``'s personal data. A repetition that found nothing
        left to erase (no key, no image, upload or model) records nothing: it is idempotent."""
        record = self.find(personal_data_id(user_id))
        erased_something = key_destroyed or images > 0 or uploads > 0 or models > 0
        if isinstance(record, PersonalData) and not erased_something:
            return CommandResult(False)
        if record is None:
            record = PersonalData(user_id=user_id, timestamp=at)
        assert isinstance(record, PersonalData)
        record.erase(actor=actor, images=images, uploads=uploads, models=models, at=at)
        self.save(record)
        return CommandResult(True)

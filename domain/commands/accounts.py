"""The commands on a credit account alone: admin grants and adjustments, expiry, and
deactivation (which cancels the account's unfinished jobs in the same save, so an account is
never deactivated with a queued job left)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain import ids
from domain.commands.jobs import stop
from domain.commands.results import AccountStatusResult, CommandResult
from domain.commands.store import CommandStore, command
from domain.credits import LotSource
from domain.jobs import JobStatus


class AccountCommands(CommandStore):
    @command
    def grant_credits(
        self,
        user_id: str,
        *,
        grant_id: str,
        source: LotSource,
        amount_mc: int,
        valid_from: datetime,
        valid_until: datetime | None,
        actor: str,
        reason: str,
        at: datetime,
    ) -> CommandResult:
        account = self.account_or_open(user_id, at)
        changed = account.grant(
            lot_id=ids.lot_id(source.value, grant_id),
            source=source,
            amount_mc=amount_mc,
            valid_from=valid_from,
            valid_until=valid_until,
            reference=grant_id,
            actor=actor,
            reason=reason,
            at=at,
        )
        return self.save_account(account, changed=changed, at=at)

    @command
    def adjust_credits(
        self,
        user_id: str,
        *,
        adjustment_id: str,
        amount_mc: int,
        reason: str,
        actor: str,
        at: datetime,
    ) -> CommandResult:
        account = self.account(user_id)
        changed = account.adjust(
            adjustment_id=adjustment_id, amount_mc=amount_mc, reason=reason, actor=actor, at=at
        )
        self.watch_balance(account, at)
        self.save(account)
        return CommandResult(changed)

    @command
    def expire_due(self, user_id: str, at: datetime) -> CommandResult:
        """Expire every lot of this user whose validity ended by ``at`` (safe to repeat)."""
        account = self.account(user_id)
        expired = account.expire_due(at)
        self.watch_balance(account, at)
        self.save(account)
        return CommandResult(expired > 0)

    @command
    def deactivate_user(
        self, user_id: str, *, reason: str, actor: str, at: datetime
    ) -> AccountStatusResult:
        """An admin stops an account: no new jobs, and every unfinished one is cancelled as
        the owner's cancel would (queued: cancelled now, hold voided; running: asked to stop,
        the GPU time used is billed). One save: never deactivated with a queued job left."""
        account = self.account(user_id)
        changed = account.deactivate(reason=reason, actor=actor, at=at)
        jobs = [self.job(UUID(hold.job_id)) for hold in account.open_holds]
        cancelled: list[UUID] = []
        stopping: list[UUID] = []
        for job in jobs:
            running = job.status == JobStatus.RUNNING.value
            if stop(job, account, reason="account deactivated", at=at):
                (stopping if running else cancelled).append(job.id)
        if not changed and not cancelled and not stopping:
            return AccountStatusResult(False, True, account.version)
        self.save(account, *jobs)
        assert all(j.is_terminal or j.cancel_requested for j in jobs)
        return AccountStatusResult(
            changed, True, account.version, tuple(cancelled), tuple(stopping)
        )

    @command
    def reactivate_user(
        self, user_id: str, *, reason: str, actor: str, at: datetime
    ) -> AccountStatusResult:
        account = self.account(user_id)
        if not account.reactivate(reason=reason, actor=actor, at=at):
            return AccountStatusResult(False, False, account.version)
        self.save(account)
        return AccountStatusResult(True, False, account.version)

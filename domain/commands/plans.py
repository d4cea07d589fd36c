"""The commands of the plans an admin assigns, which run on the service's own clock: any plan
with a reason, tester windows that revert when they end, and enterprise contracts whose
monthly periods grant their credits once (README, "Tester grants", "Enterprise contracts").
Each saves the subscription and the credits it grants together."""

from __future__ import annotations

from datetime import datetime

from domain import ids
from domain.commands.results import CommandResult
from domain.commands.store import CommandStore, command
from domain.credits import CreditAccount, LotSource
from domain.subscription import CustomTerms, Subscription
from domain.units import credits_to_mc


class PlanCommands(CommandStore):
    @command
    def change_plan(
        self,
        user_id: str,
        *,
        to_plan: str,
        actor: str,
        reason: str,
        at: datetime,
        custom_terms: CustomTerms | None = None,
    ) -> CommandResult:
        """An admin assigns a plan. Enterprise terms with no Stripe subscription running are a
        contract: its first period's credits are granted in the same save."""
        sub = self.subscription(user_id)
        account = self.account_or_open(user_id, at)
        changed = sub.change_plan(
            to_plan=to_plan, actor=actor, reason=reason, at=at, custom_terms=custom_terms
        )
        changed |= self._grant_contract_period(sub, account, at)
        self.save(sub, account)
        return CommandResult(changed)

    @command
    def grant_tester_plan(
        self,
        user_id: str,
        *,
        grant_id: str,
        admin: str,
        credits: int,
        valid_from: datetime,
        valid_until: datetime,
        reason: str,
        at: datetime,
    ) -> CommandResult:
        """An admin puts a user on the tester plan with credits for a validity window; the plan
        reverts when the window ends (end_tester_plan), the credits expire with their lot."""
        sub = self.subscription(user_id)
        account = self.account_or_open(user_id, at)
        changed = sub.grant_tester(
            grant_id=grant_id, valid_until=valid_until, actor=admin, reason=reason, at=at
        )
        changed |= account.grant(
            lot_id=ids.lot_id("tester", grant_id),
            source=LotSource.TESTER,
            amount_mc=credits_to_mc(credits),
            valid_from=valid_from,
            valid_until=valid_until,
            reference=grant_id,
            actor=admin,
            reason=reason,
            at=at,
        )
        self.watch_balance(account, at, sub.plan)
        self.save(sub, account)
        return CommandResult(changed)

    @command
    def end_tester_plan(self, user_id: str, at: datetime) -> CommandResult:
        """The tester window is over: back to the plan from before it (safe to repeat). Back
        on a contract, a period that began meanwhile is granted in the same save."""
        sub = self.subscription(user_id)
        if not sub.end_tester_plan(at):
            return CommandResult(False)
        account = self.account_or_open(user_id, at)
        self._grant_contract_period(sub, account, at)
        self.save(sub, account)
        return CommandResult(True)

    @command
    def start_contract_period(self, user_id: str, at: datetime) -> CommandResult:
        """Grant the credits of the contract period containing ``at``, once (safe to repeat)."""
        sub = self.subscription(user_id)
        account = self.account_or_open(user_id, at)
        if not self._grant_contract_period(sub, account, at):
            return CommandResult(False)
        self.save(sub, account)
        return CommandResult(True)

    def _grant_contract_period(
        self, sub: Subscription, account: CreditAccount, at: datetime
    ) -> bool:
        """Start the due contract period on ``sub`` and grant its credits, valid to its end,
        as a lot keyed by the subscription and the period's start."""
        credits_mc = sub.start_contract_period(at)
        if credits_mc is None:
            return False
        reference = ids.contract_period_reference(sub.id, sub.period_start)
        granted = account.grant(
            lot_id=ids.lot_id(LotSource.CONTRACT.value, reference),
            source=LotSource.CONTRACT,
            amount_mc=credits_mc,
            valid_from=sub.period_start,
            valid_until=sub.period_end,
            reference=reference,
            actor="system",
            reason=f"{sub.plan_slug} contract period",
            at=at,
        )
        assert granted, f"contract period {reference} was granted without its event"
        self.watch_balance(account, at, sub.plan)
        return True

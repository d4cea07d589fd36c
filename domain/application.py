"""The command side: one eventsourcing Application holding every aggregate type.

Commands that touch a job and its credit account save both in one transaction, so a hold never
exists without its job (or the reverse). Every command is idempotent: ids derive from what the
caller sent (user, Idempotency-Key, invoice id, grant id), and a repeated command finds its
aggregate already there and changes nothing. Time is always an argument.

A version conflict (another writer saved the same aggregate first) is retried a bounded number
of times; each retry reads the aggregates again, so the commands' checks see the newest state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Recording,
    Tracking,
)

from domain import ids
from domain.catalog import MODELS
from domain.credits import CreditAccount, HoldAsDict, LotAsDict, LotSource
from domain.errors import (
    AccountDeactivated,
    InsufficientCredits,
    InvalidParameters,
    InvalidTransition,
    NotFound,
)
from domain.estimation import budget_ms_for_hold, charge_for, estimate_gpu_ms, hold_for_estimate
from domain.jobs import (
    MAX_ATTEMPTS,
    Fault,
    GenerationJob,
    ImageRecord,
    JobParameters,
    JobStatus,
    RejectionReason,
)
from domain.plans import RATE_MC_PER_GPU_MS, GpuTier, Plan, get_plan
from domain.subscription import CustomTerms, Subscription
from domain.units import credits_to_mc
from domain.webhooks import StripeEventRecord

TRIAL_GRANT_REFERENCE = "trial"
MAX_CONFLICT_RETRIES = 64

T = TypeVar("T")


_TRACKING: ContextVar[Tracking | None] = ContextVar("pinksea_tracking", default=None)
# The Stripe event being handled: saved with the first save of its effect, exactly once.
_STRIPE_EVENT: ContextVar[_PendingStripeEvent | None] = ContextVar("pinksea_stripe", default=None)


@dataclass
class _PendingStripeEvent:
    event_id: str
    type: str
    at: datetime
    saved: bool = False

    def record(self) -> StripeEventRecord:
        # A fresh aggregate per attempt: a failed save must not lose the record's event.
        return StripeEventRecord(
            stripe_event_id=self.event_id,
            stripe_type=self.type,
            outcome="applied",
            timestamp=self.at,
        )


class StripeEventAlreadyApplied(Exception):
    """Another delivery of the same Stripe event took effect first."""


class ConcurrencyConflict(Exception):
    """A command lost the race for its aggregates more often than the retry bound allows."""


@dataclass(frozen=True)
class CommandResult:
    changed: bool  # False: a repetition of an earlier command, nothing new recorded
    position: int  # notification id the caller's next query can wait for


@dataclass(frozen=True)
class SubmitResult:
    job_id: UUID
    status: str
    hold_mc: int
    budget_ms: int
    rejection: str | None
    detail: str | None
    position: int
    created: bool  # False: the Idempotency-Key was seen before, this is the first result again


@dataclass(frozen=True)
class AccountStatusResult:
    changed: bool  # False: the account was in that state already
    position: int
    deactivated: bool
    version: int  # the account's version at which ``deactivated`` holds (orders the API's flags)
    cancelled_jobs: tuple[UUID, ...] = ()  # queued jobs cancelled, their holds voided
    stopping_jobs: tuple[UUID, ...] = ()  # running jobs asked to stop (GPU time used is billed)


@dataclass(frozen=True)
class SettlementResult:
    applied: bool  # False: a duplicate or stale report, nothing changed
    job_status: str
    charged_mc: int
    position: int


class PinkseaApplication(Application[UUID]):
    name = "Pinksea"  # the event tables are pinksea_events and pinksea_snapshots
    snapshotting_intervals = {CreditAccount: 50}
    # Cached aggregates are fast-forwarded from the store on every read (one query instead of
    # snapshot + events), and deep-copied so a failed command never corrupts the cache.
    env = {"AGGREGATE_CACHE_MAXSIZE": "10000"}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(LotAsDict())
        transcoder.register(HoldAsDict())

    # ------------------------------------------------------------------------ plumbing

    def _retrying(self, command: Callable[[], T]) -> T:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return command()
            except IntegrityError:
                pending = _STRIPE_EVENT.get()
                if pending is not None and self._get(ids.stripe_event_id(pending.event_id)):
                    raise StripeEventAlreadyApplied(pending.event_id) from None
                continue  # someone saved these aggregates first: read them again
        raise ConcurrencyConflict("too many concurrent writers on the same aggregates; retry")

    def _get(self, aggregate_id: UUID) -> Any:
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def _position(self, recordings: list[Recording[UUID]]) -> int:
        if recordings:
            return max(r.notification.id for r in recordings)
        return self.current_position()

    def current_position(self) -> int:
        """The newest notification id: a safe read-your-writes target for a no-op command."""
        return self.recorder.max_notification_id() or 0

    def _save(self, *aggregates: Aggregate | None) -> int:
        pending = _STRIPE_EVENT.get()
        if pending is not None and not pending.saved:
            position = self._save_unrecorded(*aggregates, pending.record())
            pending.saved = True
            return position
        return self._save_unrecorded(*aggregates)

    def _save_unrecorded(self, *aggregates: Aggregate | None) -> int:
        tracking = _TRACKING.get()
        if tracking is None:
            return self._position(self.save(*aggregates))
        # A consumer's position recorded in the same transaction as the events it caused.
        processing = ProcessingEvent[UUID](tracking=tracking)
        processing.collect_events(*aggregates)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        return self._position(recordings)

    @contextmanager
    def stripe_event(self, event_id: str, type_: str, at: datetime) -> Iterator[bool]:
        """Handle one Stripe event exactly once. Yields False when it took effect before;
        otherwise its record is saved with the first save inside the block (or alone, if the
        block saved nothing)."""
        if self._get(ids.stripe_event_id(event_id)) is not None:
            yield False
            return
        pending = _PendingStripeEvent(event_id, type_, at)
        token = _STRIPE_EVENT.set(pending)
        try:
            yield True
            if not pending.saved:
                try:
                    self._save_unrecorded(pending.record())
                except IntegrityError:
                    raise StripeEventAlreadyApplied(event_id) from None
        finally:
            _STRIPE_EVENT.reset(token)

    def stripe_event_seen(self, event_id: str) -> bool:
        return self._get(ids.stripe_event_id(event_id)) is not None

    @contextmanager
    def tracking(self, tracking: Tracking) -> Iterator[None]:
        """Within the block, every save also records ``tracking`` (needs a process recorder:
        see workflows/tracking.py). A repeated position makes the save fail."""
        token = _TRACKING.set(tracking)
        try:
            yield
        finally:
            _TRACKING.reset(token)

    def account(self, user_id: str) -> CreditAccount:
        account = self._get(ids.account_id(user_id))
        if account is None:
            raise NotFound(f"user {user_id} has no credit account; register them first")
        assert isinstance(account, CreditAccount)
        return account

    def subscription(self, user_id: str) -> Subscription:
        sub = self._get(ids.subscription_id(user_id))
        if sub is None:
            raise NotFound(f"user {user_id} is not registered")
        assert isinstance(sub, Subscription)
        return sub

    def job(self, job_id: UUID) -> GenerationJob:
        job = self._get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        assert isinstance(job, GenerationJob)
        return job

    def _watch_balance(
        self, account: CreditAccount, at: datetime, plan: Plan | None = None
    ) -> None:
        """Warn once when available credit falls below the plan's threshold, and re-arm the
        warning when it is back above."""
        if plan is None:
            sub = self._get(ids.subscription_id(account.user_id))
            if sub is None:
                return
            plan = sub.plan
        account.check_low_balance(plan.low_balance_threshold_mc, at)

    def _account_changed(
        self, account: CreditAccount, changed: bool, at: datetime
    ) -> CommandResult:
        """Save a changed account (watching its balance); a repeated command saves nothing."""
        if not changed:
            return CommandResult(False, self.current_position())
        self._watch_balance(account, at)
        return CommandResult(True, self._save(account))

    def _account_or_open(self, user_id: str, at: datetime) -> CreditAccount:
        account = self._get(ids.account_id(user_id))
        return account if account is not None else CreditAccount(user_id=user_id, timestamp=at)

    # ------------------------------------------------------------------- users and plans

    def register_user(self, user_id: str, at: datetime) -> CommandResult:
        """Sign-up: a trial subscription, a credit account and the trial's credits, at once."""

        def command() -> CommandResult:
            if self._get(ids.subscription_id(user_id)) is not None:
                return CommandResult(False, self.current_position())
            sub = Subscription.start_trial(user_id, at)
            account = self._account_or_open(user_id, at)
            account.grant(
                lot_id=ids.lot_id("trial", user_id),
                source=LotSource.TRIAL,
                amount_mc=sub.plan.credits_per_month_mc,
                valid_from=sub.period_start,
                valid_until=sub.period_end,
                reference=TRIAL_GRANT_REFERENCE,
                actor="system",
                reason="trial credits on sign-up",
                at=at,
            )
            return CommandResult(True, self._save(sub, account))

        return self._retrying(command)

    def start_subscription(
        self,
        user_id: str,
        *,
        plan: str,
        external_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
    ) -> CommandResult:
        def command() -> CommandResult:
            sub = self.subscription(user_id)
            changed = sub.start(
                plan=plan,
                external_id=external_id,
                period_start=period_start,
                period_end=period_end,
                at=at,
            )
            return CommandResult(changed, self._save(sub))

        return self._retrying(command)

    def renew_period(
        self,
        user_id: str,
        *,
        invoice_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
        start_plan: str | None = None,
        external_id: str | None = None,
    ) -> CommandResult:
        """A paid invoice: record the period and grant its credits, valid to period end.

        With ``start_plan`` and ``external_id``, a subscription not yet started is started
        first, in the same save: an invoice may arrive before its subscription's own event."""

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            if start_plan and external_id and sub.status in ("trialing", "ended"):
                sub.start(
                    plan=start_plan,
                    external_id=external_id,
                    period_start=period_start,
                    period_end=period_end,
                    at=at,
                )
            credits_mc = sub.renew(
                invoice_id=invoice_id,
                period_start=period_start,
                period_end=period_end,
                at=at,
                plan=start_plan,
            )
            if credits_mc is None:
                return CommandResult(False, self.current_position())
            account = self._account_or_open(user_id, at)
            account.grant(
                lot_id=ids.lot_id("invoice", invoice_id),
                source=LotSource.SUBSCRIPTION,
                amount_mc=credits_mc,
                valid_from=period_start,
                valid_until=period_end,
                reference=invoice_id,
                actor="stripe",
                reason=f"{sub.plan_slug} plan period",
                at=at,
            )
            self._watch_balance(account, at, sub.plan)
            return CommandResult(True, self._save(sub, account))

        return self._retrying(command)

    def sync_stripe_subscription(
        self,
        user_id: str,
        *,
        external_id: str,
        plan: str,
        status: str,
        period_start: datetime,
        period_end: datetime,
        cancel_at_period_end: bool,
        object_at: datetime,
        at: datetime,
    ) -> CommandResult:
        """Apply the state of a Stripe subscription object (created/updated/deleted events) in
        one save. Snapshots older than the last one applied are ignored, so deliveries in any
        order converge to the newest state."""

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            if sub.is_stale(object_at):
                return CommandResult(False, self.current_position())
            running = sub.status in ("active", "past_due")
            if status == "canceled":
                sub.end(reason="cancelled in Stripe", at=at)
            elif status not in ("active", "trialing", "past_due"):
                pass  # incomplete: nothing is paid yet, nothing starts
            elif not running or sub.external_id != external_id:
                if running:
                    sub.end(reason="replaced by a new Stripe subscription", at=at)
                sub.start(
                    plan=plan,
                    external_id=external_id,
                    period_start=period_start,
                    period_end=period_end,
                    at=at,
                )
            elif plan != sub.plan_slug:
                # Credits for the rest of the period follow the proration invoice.
                sub.change_plan(
                    to_plan=plan, actor="stripe", reason="plan changed in Stripe", at=at
                )
            if status != "canceled":
                if cancel_at_period_end:
                    if sub.cancel_at is None:
                        sub.schedule_cancellation(at)
                elif sub.cancel_at is not None:
                    sub.revoke_cancellation(at)
            sub.mark_stripe_synced(object_at, at)
            return CommandResult(True, self._save(sub))

        return self._retrying(command)

    def link_stripe_customer(self, user_id: str, customer_id: str, at: datetime) -> CommandResult:
        return self._on_subscription(user_id, lambda s: s.link_customer(customer_id, at))

    def grant_upgrade_credits(
        self,
        user_id: str,
        *,
        invoice_id: str,
        from_plan: str,
        to_plan: str,
        amount_paid_cents: int,
        valid_until: datetime,
        at: datetime,
    ) -> CommandResult:
        """An upgrade's proration invoice was paid: credits follow the money. The grant is the
        difference in monthly credits times the share of a month's price difference that the
        invoice charged (integer arithmetic, rounded down), valid to the period's end, keyed by
        the invoice id. A downgrade charges nothing and grants nothing: the lower allowance
        starts with the next paid period."""
        old, new = get_plan(from_plan), get_plan(to_plan)
        if old.usd_per_month is None or new.usd_per_month is None:
            raise InvalidParameters("upgrades between negotiated plans are granted by an admin")
        price_step_cents = int((new.usd_per_month - old.usd_per_month) * 100)
        credit_step_mc = new.credits_per_month_mc - old.credits_per_month_mc
        if price_step_cents <= 0 or credit_step_mc <= 0 or amount_paid_cents <= 0:
            return CommandResult(False, self.current_position())
        amount_mc = credit_step_mc * min(amount_paid_cents, price_step_cents) // price_step_cents

        def command() -> CommandResult:
            account = self._account_or_open(user_id, at)
            changed = account.grant(
                lot_id=ids.lot_id("invoice", invoice_id),
                source=LotSource.SUBSCRIPTION,
                amount_mc=amount_mc,
                valid_from=at,
                valid_until=valid_until,
                reference=invoice_id,
                actor="stripe",
                reason=f"upgrade from {from_plan} to {to_plan}, prorated",
                at=at,
            )
            return self._account_changed(account, changed, at)

        return self._retrying(command)

    def revoke_invoice_credits(
        self, user_id: str, *, invoice_id: str, reason: str, at: datetime
    ) -> CommandResult:
        """The invoice's payment was refunded: take back what is left of its credits."""

        def command() -> CommandResult:
            account = self.account(user_id)
            taken = account.revoke_lot(
                adjustment_id=f"revoke:{invoice_id}",
                lot_id=ids.lot_id("invoice", invoice_id),
                reason=reason,
                actor="stripe",
                at=at,
            )
            return self._account_changed(account, bool(taken), at)

        return self._retrying(command)

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

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            account = self._account_or_open(user_id, at)
            changed = sub.change_plan(
                to_plan=to_plan, actor=actor, reason=reason, at=at, custom_terms=custom_terms
            )
            changed |= self._grant_contract_period(sub, account, at)
            return CommandResult(changed, self._save(sub, account))

        return self._retrying(command)

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

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            account = self._account_or_open(user_id, at)
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
            self._watch_balance(account, at, sub.plan)
            return CommandResult(changed, self._save(sub, account))

        return self._retrying(command)

    def end_tester_plan(self, user_id: str, at: datetime) -> CommandResult:
        """The tester window is over: back to the plan from before it (safe to repeat). Back
        on a contract, a period that began meanwhile is granted in the same save."""

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            if not sub.end_tester_plan(at):
                return CommandResult(False, self.current_position())
            account = self._account_or_open(user_id, at)
            self._grant_contract_period(sub, account, at)
            return CommandResult(True, self._save(sub, account))

        return self._retrying(command)

    def start_contract_period(self, user_id: str, at: datetime) -> CommandResult:
        """Grant the credits of the contract period containing ``at``, once (safe to repeat)."""

        def command() -> CommandResult:
            sub = self.subscription(user_id)
            account = self._account_or_open(user_id, at)
            if not self._grant_contract_period(sub, account, at):
                return CommandResult(False, self.current_position())
            return CommandResult(True, self._save(sub, account))

        return self._retrying(command)

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
        self._watch_balance(account, at, sub.plan)
        return True

    def schedule_cancellation(self, user_id: str, at: datetime) -> CommandResult:
        return self._on_subscription(user_id, lambda s: s.schedule_cancellation(at))

    def revoke_cancellation(self, user_id: str, at: datetime) -> CommandResult:
        return self._on_subscription(user_id, lambda s: s.revoke_cancellation(at))

    def record_payment_failed(
        self, user_id: str, *, invoice_id: str, at: datetime
    ) -> CommandResult:
        return self._on_subscription(
            user_id, lambda s: s.record_payment_failed(invoice_id=invoice_id, at=at)
        )

    def end_subscription(self, user_id: str, *, reason: str, at: datetime) -> CommandResult:
        return self._on_subscription(user_id, lambda s: s.end(reason=reason, at=at))

    def _on_subscription(
        self, user_id: str, change: Callable[[Subscription], bool]
    ) -> CommandResult:
        def command() -> CommandResult:
            sub = self.subscription(user_id)
            changed = change(sub)
            return CommandResult(changed, self._save(sub))

        return self._retrying(command)

    # ------------------------------------------------------------------------ credits

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
        def command() -> CommandResult:
            account = self._account_or_open(user_id, at)
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
            return self._account_changed(account, changed, at)

        return self._retrying(command)

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
        def command() -> CommandResult:
            account = self.account(user_id)
            changed = account.adjust(
                adjustment_id=adjustment_id, amount_mc=amount_mc, reason=reason, actor=actor, at=at
            )
            self._watch_balance(account, at)
            return CommandResult(changed, self._save(account))

        return self._retrying(command)

    def deactivate_user(
        self, user_id: str, *, reason: str, actor: str, at: datetime
    ) -> AccountStatusResult:
        """An admin stops an account: no new jobs, and every unfinished one is cancelled as
        the owner's cancel would (queued: cancelled now, hold voided; running: asked to stop,
        the GPU time used is billed). One save: never deactivated with a queued job left."""

        def command() -> AccountStatusResult:
            account = self.account(user_id)
            changed = account.deactivate(reason=reason, actor=actor, at=at)
            jobs = [self.job(UUID(hold.job_id)) for hold in account.open_holds]
            cancelled: list[UUID] = []
            stopping: list[UUID] = []
            for job in jobs:
                running = job.status == JobStatus.RUNNING.value
                if _stop(job, account, reason="account deactivated", at=at):
                    (stopping if running else cancelled).append(job.id)
            if not changed and not cancelled and not stopping:
                return AccountStatusResult(False, self.current_position(), True, account.version)
            position = self._save(account, *jobs)
            assert all(j.is_terminal or j.cancel_requested for j in jobs)
            return AccountStatusResult(
                changed, position, True, account.version, tuple(cancelled), tuple(stopping)
            )

        return self._retrying(command)

    def reactivate_user(
        self, user_id: str, *, reason: str, actor: str, at: datetime
    ) -> AccountStatusResult:
        def command() -> AccountStatusResult:
            account = self.account(user_id)
            if not account.reactivate(reason=reason, actor=actor, at=at):
                return AccountStatusResult(False, self.current_position(), False, account.version)
            return AccountStatusResult(True, self._save(account), False, account.version)

        return self._retrying(command)

    def expire_due(self, user_id: str, at: datetime) -> CommandResult:
        """Expire every lot of this user whose validity ended by ``at`` (safe to repeat)."""

        def command() -> CommandResult:
            account = self.account(user_id)
            expired = account.expire_due(at)
            self._watch_balance(account, at)
            return CommandResult(expired > 0, self._save(account))

        return self._retrying(command)

    # --------------------------------------------------------------------------- jobs

    def submit_job(
        self,
        user_id: str,
        *,
        idempotency_key: str,
        params: JobParameters,
        at: datetime,
        storage_used_bytes: int = 0,
    ) -> SubmitResult:
        """Create the job and hold its credits in one save, or record why it was rejected.

        Invalid parameters raise InvalidParameters and record nothing.
        """

        def command() -> SubmitResult:
            sub = self.subscription(user_id)
            account = self.account(user_id)
            if account.deactivated:  # checked first: a deactivated account records nothing
                raise AccountDeactivated("this account is deactivated; it can run no new jobs")
            plan = sub.plan
            job = GenerationJob.submit(
                user_id=user_id,
                idempotency_key=idempotency_key,
                params=params,
                tier=plan.tier.value,
                at=at,
            )
            _decide(job, sub, plan, account, params, storage_used_bytes, at)
            account.check_low_balance(plan.low_balance_threshold_mc, at)
            try:
                # Optimistic: a repeated key is rare, so don't read the job first; the job's
                # first event conflicts on save if the key was used before.
                position = self._save(job, account)
            except IntegrityError:
                existing = self._get(job.id)
                if existing is None:
                    raise  # the account changed under us: _retrying reads it again
                assert isinstance(existing, GenerationJob)
                existing.ensure_same_request(params)
                return _submit_result(existing, self.current_position(), created=False)
            return _submit_result(job, position, created=True)

        return self._retrying(command)

    def cancel_job(self, job_id: UUID, at: datetime) -> CommandResult:
        """The user's cancel. Before start: cancelled now and the hold voided. Running: the
        worker is asked to stop and reports the GPU time used, which is billed."""

        def command() -> CommandResult:
            job = self.job(job_id)
            if job.is_terminal:
                return CommandResult(False, self.current_position())
            if job.status == JobStatus.RUNNING.value:
                changed = job.request_cancel(at)
                return CommandResult(changed, self._save(job))
            account = self.account(job.user_id)
            _stop(job, account, reason="cancelled before start", at=at)
            return CommandResult(True, self._save(job, account))

        return self._retrying(command)

    def record_dispatch(
        self, job_id: UUID, *, attempt: int, worker_id: str, at: datetime
    ) -> CommandResult:
        """The scheduler handed an attempt to a worker. Past the attempt cap the job fails
        (platform fault, hold voided): it goes to the dead-letter topic instead of looping."""

        def command() -> CommandResult:
            job = self.job(job_id)
            if job.is_terminal:
                return CommandResult(False, self.current_position())
            if attempt > MAX_ATTEMPTS:
                account = self.account(job.user_id)
                job.fail(
                    attempt=job.attempt,
                    reason=f"gave up after {MAX_ATTEMPTS} attempts",
                    retryable=False,
                    fault=Fault.PLATFORM,
                    gpu_ms=0,
                    charged_mc=0,
                    at=at,
                )
                account.release(hold_id=job.hold_id, reason="attempts exhausted", at=at)
                return CommandResult(True, self._save(job, account))
            changed = job.dispatch(attempt=attempt, worker_id=worker_id, at=at)
            return CommandResult(changed, self._save(job))

        return self._retrying(command)

    def record_start(
        self, job_id: UUID, *, attempt: int, worker_id: str, gpu: str, at: datetime
    ) -> CommandResult:
        def command() -> CommandResult:
            job = self.job(job_id)
            changed = not job.is_terminal and job.start(
                attempt=attempt, worker_id=worker_id, gpu=gpu, at=at
            )
            return CommandResult(changed, self._save(job) if changed else self.current_position())

        return self._retrying(command)

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

        def command() -> SettlementResult:
            job = self.job(job_id)
            if not job.is_current(attempt):
                return self._unchanged(job)
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
            return SettlementResult(True, job.status, charged, self._save(job, account))

        return self._retrying(command)

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
        terminal: a platform fault voids the hold; a user fault bills the GPU time used."""

        def command() -> SettlementResult:
            job = self.job(job_id)
            if not job.is_current(attempt):
                return self._unchanged(job)
            if retryable and attempt < MAX_ATTEMPTS:
                job.fail_attempt(attempt=attempt, reason=reason, at=at)
                return SettlementResult(True, job.status, 0, self._save(job))
            account = self.account(job.user_id)
            if fault is Fault.USER:
                charged = _settle(account, job, gpu_ms, at)
            else:
                charged = 0
                account.release(hold_id=job.hold_id, reason=f"platform failure: {reason}", at=at)
            job.fail(
                attempt=attempt,
                reason=reason,
                retryable=retryable,
                fault=fault,
                gpu_ms=gpu_ms,
                charged_mc=charged,
                at=at,
            )
            _rearm_low_balance(account, at)
            return SettlementResult(True, job.status, charged, self._save(job, account))

        return self._retrying(command)

    def record_cancelled_run(
        self, job_id: UUID, *, attempt: int, gpu_ms: int, at: datetime
    ) -> SettlementResult:
        """The worker stopped a running job the user cancelled: bill the GPU time used."""

        def command() -> SettlementResult:
            job = self.job(job_id)
            if not job.is_current(attempt):
                return self._unchanged(job)
            account = self.account(job.user_id)
            charged = _settle(account, job, gpu_ms, at)
            job.cancel(gpu_ms=gpu_ms, charged_mc=charged, at=at)
            _rearm_low_balance(account, at)
            return SettlementResult(True, job.status, charged, self._save(job, account))

        return self._retrying(command)

    def refund_job(self, job_id: UUID, *, reason: str, actor: str, at: datetime) -> CommandResult:
        """Give a job's charge back to the lots it was drawn from (admin action)."""

        def command() -> CommandResult:
            job = self.job(job_id)
            if job.refunded_mc:
                return CommandResult(False, self.current_position())
            if job.charged_mc == 0:
                raise InvalidTransition("the job was not charged; there is nothing to refund")
            account = self.account(job.user_id)
            amount = account.refund(hold_id=job.hold_id, reason=reason, actor=actor, at=at)
            job.refund(amount_mc=amount, reason=reason, actor=actor, at=at)
            return CommandResult(True, self._save(job, account))

        return self._retrying(command)

    def delete_image(self, job_id: UUID, *, user_id: str, name: str, at: datetime) -> CommandResult:
        """The owner deletes one of a job's images (its S3 objects are the caller's to remove).
        A repeated delete changes nothing; an unknown job or image, or another user's, is
        NotFound."""

        def command() -> CommandResult:
            job = self.job(job_id)
            if not job.delete_image(name=name, user_id=user_id, at=at):
                return CommandResult(False, self.current_position())
            return CommandResult(True, self._save(job))

        return self._retrying(command)

    def _unchanged(self, job: GenerationJob) -> SettlementResult:
        return SettlementResult(False, job.status, job.charged_mc, self.current_position())


# ------------------------------------------------------------------------------ helpers


def _rearm_low_balance(account: CreditAccount, at: datetime) -> None:
    """Settlements give credit back: re-arm a raised warning with the threshold it used (no
    subscription read on the billing hot path)."""
    if account.low_balance:
        account.check_low_balance(account.low_balance_threshold_mc, at)


def _stop(job: GenerationJob, account: CreditAccount, *, reason: str, at: datetime) -> bool:
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


def _rate(job: GenerationJob) -> int:
    return RATE_MC_PER_GPU_MS[GpuTier(job.tier)]


def _settle(
    account: CreditAccount,
    job: GenerationJob,
    gpu_ms: int,
    at: datetime,
    *,
    cuda_ms: int | None = None,
) -> int:
    """Settle the job's hold at its billed GPU time; returns the charge."""
    billed_ms, charged = _billed(job, gpu_ms)
    account.settle(
        hold_id=job.hold_id,
        charged_mc=charged,
        gpu_ms=billed_ms,
        rate_mc_per_ms=_rate(job),
        tier=job.tier,
        cuda_ms=cuda_ms,
        at=at,
    )
    return charged


def _billed(job: GenerationJob, gpu_ms: int) -> tuple[int, int]:
    """The GPU-ms billed and their charge. The worker stops a job at its budget, within one
    step; time past the budget is the platform's, so a job never costs more than its hold."""
    billed_ms = min(gpu_ms, job.budget_ms)
    return billed_ms, charge_for(billed_ms, GpuTier(job.tier))


def _decide(
    job: GenerationJob,
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
    at: datetime,
) -> None:
    """Accept the job and hold its credits on the account, or reject it with a reason."""
    refusal = _entitlement_refusal(sub, plan, account, params, storage_used_bytes)
    if refusal is not None:
        job.reject(reason=refusal[0], detail=refusal[1], at=at)
        return
    estimate_ms = estimate_gpu_ms(
        MODELS[params.model].family,
        plan.tier,
        steps=params.steps,
        width=params.width,
        height=params.height,
        batch_size=params.batch_size,
        model=params.model,
    )
    hold_mc = hold_for_estimate(estimate_ms, plan.tier)
    try:
        account.reserve(hold_id=job.hold_id, job_id=str(job.id), amount_mc=hold_mc, at=at)
    except InsufficientCredits as e:
        job.reject(reason=RejectionReason.INSUFFICIENT_CREDITS, detail=e.detail, at=at)
        return
    job.accept(
        hold_mc=hold_mc,
        estimate_ms=estimate_ms,
        budget_ms=budget_ms_for_hold(hold_mc, plan.tier),
        at=at,
    )


def _entitlement_refusal(
    sub: Subscription,
    plan: Plan,
    account: CreditAccount,
    params: JobParameters,
    storage_used_bytes: int,
) -> tuple[RejectionReason, str] | None:
    if sub.is_past_due:
        return (
            RejectionReason.PAYMENT_FAILED,
            "your last payment failed; update your payment method in the billing portal",
        )
    required = MODELS[params.model].access
    if not plan.model_access.allows(required):
        return (
            RejectionReason.MODEL_NOT_IN_PLAN,
            f"{params.model} needs a plan with {required.value} model access; "
            f"your {plan.slug} plan has {plan.model_access.value}: upgrade to use it",
        )
    if storage_used_bytes >= plan.storage_bytes:
        return (
            RejectionReason.STORAGE_QUOTA,
            f"your images use all {plan.storage_gb} GB of your {plan.slug} plan; "
            "delete images or upgrade for more storage",
        )
    if len(account.open_holds) >= plan.max_open_jobs:
        return (
            RejectionReason.QUEUE_LIMIT,
            f"you have {plan.max_open_jobs} unfinished jobs, the most your {plan.slug} plan "
            "allows; wait for some to finish or upgrade",
        )
    return None


def _submit_result(job: GenerationJob, position: int, *, created: bool) -> SubmitResult:
    return SubmitResult(
        job_id=job.id,
        status=job.status,
        hold_mc=job.hold_mc,
        budget_ms=job.budget_ms,
        rejection=job.rejection,
        detail=job.rejection_detail,
        position=position,
        created=created,
    )


__all__ = [
    "AccountStatusResult",
    "CommandResult",
    "ConcurrencyConflict",
    "PinkseaApplication",
    "SettlementResult",
    "SubmitResult",
]

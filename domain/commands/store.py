"""The store the commands run on, and the one rule every command follows.

A command reads its aggregates, calls them, and saves them in one transaction; if another
writer saved one of them first (a version conflict, the recorder's IntegrityError), it reads
them again and decides again, a bounded number of times. That loop used to be written out in
each command; ``@command`` owns it now, so a command's body reads as in the eventsourcing
examples (get, call, save) and no command can forget a retry or retry differently.

``@command`` also owns the position a command returns (the read-your-writes target of the
caller's next query): ``save`` tells the running attempt what it recorded, and the decorator
puts the newest notification id of that attempt, or the store's newest when it recorded
nothing, into the body's result. The attempt is found through a context variable set and reset
by the decorator around each attempt of the body; it changes nothing that is saved.

What a command saves is always named at its ``save``: a Stripe event's record is passed to the
command that applies it (``stripe_event=``, domain/webhooks.py) and saved beside its
aggregates. The one implicit addition is a consumer's position (``tracking``), and only inside
the caller's explicit ``with store.tracking(...)`` block: the settler records each report's
Kafka position in the transaction of its effect.

The library saves a Tracking only through ``Application._record`` and
``Application._take_snapshots`` (as its own ProcessApplication does); they are private, so
they are called in ``_save_tracked`` only, and tests/domain/test_commands.py fails when their
shape changes in a new release of the library.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate
from eventsourcing.persistence import IntegrityError, Recording, Tracking

from domain import ids
from domain.commands.results import CommandResult, Result
from domain.credits import CreditAccount
from domain.errors import NotFound
from domain.jobs import GenerationJob
from domain.plans import Plan
from domain.subscription import Subscription
from domain.webhooks import StripeEvent, StripeEventRecord

MAX_CONFLICT_RETRIES = 64

Saveable = MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None


class ConcurrencyConflict(Exception):
    """A command lost the race for its aggregates more often than the retry bound allows."""


class StripeEventAlreadyApplied(Exception):
    """Another delivery of the same Stripe event took effect first."""


@dataclass
class _Attempt:
    position: int | None = None  # newest notification id this attempt recorded


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("pinksea_command_attempt", default=None)
_TRACKING: ContextVar[Tracking | None] = ContextVar("pinksea_tracking", default=None)

S = TypeVar("S", bound="CommandStore")
P = ParamSpec("P")
R = TypeVar("R", bound=Result)


def command(body: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Make ``body`` a command: run it until its saves go through without a version conflict
    (each attempt reads the aggregates again, so its checks see the newest state), at most
    MAX_CONFLICT_RETRIES times (then ConcurrencyConflict), and return its result with the
    position of what it saved. Any other exception ends the command; nothing was saved by the
    attempt that raised it. Commands do not nest: one command is one transaction."""

    @functools.wraps(body)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if _ATTEMPT.get() is not None:
            raise RuntimeError(f"{body.__name__} was called inside another command")
        for _ in range(MAX_CONFLICT_RETRIES):
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                result = body(self, *args, **kwargs)
            except IntegrityError:
                continue  # someone saved these aggregates first: read them again
            finally:
                _ATTEMPT.reset(token)
            if attempt.position is None:
                return replace(result, position=self.current_position())
            return replace(result, position=attempt.position)
        raise ConcurrencyConflict("too many concurrent writers on the same aggregates; retry")

    return run


class CommandStore(Application[UUID]):
    """The event store's side every group of commands shares: saving, reading, positions."""

    def save(self, *objs: Saveable, **kwargs: Any) -> list[Recording[UUID]]:
        """Save in one transaction (with the block's tracking, if any), telling the running
        command what was recorded. Saving only Nones touches nothing."""
        if all(obj is None for obj in objs):
            return []
        tracking = _TRACKING.get()
        if tracking is None:
            recordings = super().save(*objs, **kwargs)
        else:
            recordings = self._save_tracked(tracking, objs)
        attempt = _ATTEMPT.get()
        if attempt is not None and recordings:
            newest = max(r.notification.id for r in recordings)
            attempt.position = max(newest, attempt.position or 0)
        return recordings

    def _save_tracked(
        self, tracking: Tracking, objs: tuple[Saveable, ...]
    ) -> list[Recording[UUID]]:
        # The only use of the library's private API (see the module's docstring).
        processing = ProcessingEvent[UUID](tracking=tracking)
        processing.collect_events(*objs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        return recordings

    @contextmanager
    def tracking(self, tracking: Tracking) -> Iterator[None]:
        """Within the block, every save also records ``tracking`` (needs a process recorder:
        see workflows/tracking.py). A repeated position makes the save fail."""
        token = _TRACKING.set(tracking)
        try:
            yield
        finally:
            _TRACKING.reset(token)

    def current_position(self) -> int:
        """The newest notification id: a safe read-your-writes target for a no-op command."""
        return self.recorder.max_notification_id() or 0

    # ---------------------------------------------------------------------------- reading

    def find(self, aggregate_id: UUID) -> Any:
        """The aggregate, or None when there is none with that id."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def account(self, user_id: str) -> CreditAccount:
        account = self.find(ids.account_id(user_id))
        if account is None:
            raise NotFound(f"user {user_id} has no credit account; register them first")
        assert isinstance(account, CreditAccount)
        return account

    def subscription(self, user_id: str) -> Subscription:
        sub = self.find(ids.subscription_id(user_id))
        if sub is None:
            raise NotFound(f"user {user_id} is not registered")
        assert isinstance(sub, Subscription)
        return sub

    def job(self, job_id: UUID) -> GenerationJob:
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        assert isinstance(job, GenerationJob)
        return job

    def stripe_event_seen(self, event_id: str) -> bool:
        """Whether a delivery of this event was handled: one held for an operator is not (a
        redelivery is translated again, and applies once its customer is linked)."""
        record = self.find(ids.stripe_event_id(event_id))
        assert record is None or isinstance(record, StripeEventRecord)
        return record is not None and not record.held

    # ------------------------------------------------------------- shared by the commands

    def stripe_receipt(self, stripe_event: StripeEvent | None) -> StripeEventRecord | None:
        """The record a command applying ``stripe_event`` saves with its effect (None: the
        command was not sent by Stripe). Raises StripeEventAlreadyApplied when another
        delivery took effect first, which is where a conflict's retry ends."""
        if stripe_event is None:
            return None
        record = self.find(stripe_event.record_id)
        if record is None:
            return stripe_event.record()
        assert isinstance(record, StripeEventRecord)
        if record.held:  # quarantined before, and its effect is allowed now: released
            return record.release(stripe_event.at)
        raise StripeEventAlreadyApplied(stripe_event.event_id)

    def first_delivery(self, stripe_event: StripeEvent) -> None:
        """Refuse any delivery but the first of an event (for quarantine and rejection, which
        record their own outcome): StripeEventAlreadyApplied, also for one held already."""
        if self.find(stripe_event.record_id) is not None:
            raise StripeEventAlreadyApplied(stripe_event.event_id)

    def account_or_open(self, user_id: str, at: datetime) -> CreditAccount:
        account = self.find(ids.account_id(user_id))
        return account if account is not None else CreditAccount(user_id=user_id, timestamp=at)

    def watch_balance(self, account: CreditAccount, at: datetime, plan: Plan | None = None) -> None:
        """Warn once when available credit falls below the plan's threshold, and re-arm the
        warning when it is back above."""
        if plan is None:
            sub = self.find(ids.subscription_id(account.user_id))
            if sub is None:
                return
            plan = sub.plan
        account.check_low_balance(plan.low_balance_threshold_mc, at)

    def save_account(
        self,
        account: CreditAccount,
        *,
        changed: bool,
        at: datetime,
        receipt: StripeEventRecord | None = None,
    ) -> CommandResult:
        """Save a changed account, watching its balance; an unchanged one (a repeated command)
        is not saved. A Stripe receipt is saved either way."""
        if not changed:
            self.save(receipt)
            return CommandResult(False)
        self.watch_balance(account, at)
        self.save(account, receipt)
        return CommandResult(True)

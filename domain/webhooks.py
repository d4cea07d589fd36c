"""A received Stripe event, so that each Stripe event id takes effect exactly once.

The record is saved in the same transaction as the webhook's effect; a second delivery of the
same event finds it (or conflicts on it) and changes nothing.

The command that applies a Stripe event is handed a ``StripeEvent`` (its identity, not its
content) and saves ``StripeEvent.record()`` with its own aggregates, in plain sight: the reader
of a command sees what it saves. A value rather than the record itself because a failed save
consumes an aggregate's pending events: each attempt of a command makes a fresh record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import DomainError

# A record's outcome (StripeEventRecord.Received.outcome).
APPLIED, QUARANTINED, REJECTED = "applied", "quarantined", "rejected"


class CustomerNotLinked(DomainError):
    """A Stripe object's customer is not the one linked to the user its metadata names: it is
    held for an operator (quarantined), never applied."""

    code = "customer_not_linked"


class StripeEventRecord(Aggregate):
    TOPIC = "pinksea:StripeEventRecord"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Received.
        TOPIC = "pinksea:StripeEventRecord.Created"

    class Received(Aggregate.Created):
        TOPIC = "pinksea:StripeEventRecord.Received"
        stripe_event_id: str
        stripe_type: str
        outcome: str

    @staticmethod
    def create_id(stripe_event_id: str) -> UUID:
        return ids.stripe_event_id(stripe_event_id)

    @event(Received)
    def __init__(
        self, stripe_event_id: str, stripe_type: str, outcome: str, timestamp: datetime
    ) -> None:
        self.stripe_event_id = stripe_event_id
        self.stripe_type = stripe_type
        self.outcome = outcome
        self.reason = ""

    class Quarantined(Aggregate.Event):
        """Held for an operator, with no effect: the object's customer is not the user's."""

        TOPIC = "pinksea:StripeEventRecord.Quarantined"
        stripe_event_id: str  # as in Received, so that the event reads alone (admin view)
        stripe_type: str
        user_id: str
        customer_id: str
        reason: str

    class Rejected(Aggregate.Event):
        """Signed by Stripe but not what its type promises (a field missing or mistyped):
        recorded with no effect, and answered 2xx so that Stripe stops retrying it."""

        TOPIC = "pinksea:StripeEventRecord.Rejected"
        stripe_event_id: str
        stripe_type: str
        reason: str

    class Released(Aggregate.Event):
        """A quarantined event delivered again (Stripe's resend) once an operator linked its
        customer to the user: it took effect now, saved with its effect, and is applied."""

        TOPIC = "pinksea:StripeEventRecord.Released"
        stripe_event_id: str

    @property
    def held(self) -> bool:
        """Whether this event waits for an operator (quarantined and not yet released)."""
        return self.outcome == QUARANTINED

    def release(self, at: datetime) -> StripeEventRecord:
        """The record, released: to be saved with the effect of the event's redelivery."""
        assert self.held, f"{self.stripe_event_id} is {self.outcome}, not held"
        self._released(stripe_event_id=self.stripe_event_id, timestamp=at)
        assert self.outcome == APPLIED
        return self

    @event(Released)
    def _released(self, stripe_event_id: str, timestamp: datetime) -> None:
        self.outcome = APPLIED

    @event(Quarantined)
    def _quarantined(
        self, stripe_event_id: str, stripe_type: str, user_id: str, customer_id: str, reason: str
    ) -> None:
        assert self.outcome == QUARANTINED and reason
        self.reason = reason

    @event(Rejected)
    def _rejected(self, stripe_event_id: str, stripe_type: str, reason: str) -> None:
        assert self.outcome == REJECTED and reason
        self.reason = reason


@dataclass(frozen=True)
class StripeEvent:
    """One Stripe event being applied: its id, its type and when Stripe created it."""

    event_id: str
    type: str
    at: datetime

    @property
    def record_id(self) -> UUID:
        return ids.stripe_event_id(self.event_id)

    def record(self, outcome: str = APPLIED) -> StripeEventRecord:
        """A fresh record of the event's effect (every handled event is recorded "applied",
        also one the ledger refused or had no use for: a repeat would change nothing)."""
        assert outcome in (APPLIED, QUARANTINED, REJECTED), outcome
        return StripeEventRecord(
            stripe_event_id=self.event_id,
            stripe_type=self.type,
            outcome=outcome,
            timestamp=self.at,
        )

    def quarantined(self, *, user_id: str, customer_id: str, reason: str) -> StripeEventRecord:
        """A fresh record of the event held for an operator."""
        record = self.record(QUARANTINED)
        record._quarantined(
            stripe_event_id=self.event_id,
            stripe_type=self.type,
            user_id=user_id,
            customer_id=customer_id,
            reason=reason,
        )
        return record

    def rejected(self, reason: str) -> StripeEventRecord:
        """A fresh record of a signed event that is not what its type promises."""
        record = self.record(REJECTED)
        record._rejected(stripe_event_id=self.event_id, stripe_type=self.type, reason=reason)
        return record

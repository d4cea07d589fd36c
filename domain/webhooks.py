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


@dataclass(frozen=True)
class StripeEvent:
    """One Stripe event being applied: its id, its type and when Stripe created it."""

    event_id: str
    type: str
    at: datetime

    @property
    def record_id(self) -> UUID:
        return ids.stripe_event_id(self.event_id)

    def record(self) -> StripeEventRecord:
        """A fresh record of the event's effect (every handled event is recorded "applied",
        also one the ledger refused or had no use for: a repeat would change nothing)."""
        return StripeEventRecord(
            stripe_event_id=self.event_id,
            stripe_type=self.type,
            outcome="applied",
            timestamp=self.at,
        )

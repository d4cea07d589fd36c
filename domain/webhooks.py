"""A received Stripe event, so that each Stripe event id takes effect exactly once.

The record is saved in the same transaction as the webhook's effect; a second delivery of the
same event finds it (or conflicts on it) and changes nothing."""

from __future__ import annotations

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

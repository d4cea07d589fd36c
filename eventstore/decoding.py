"""Envelopes back to domain event objects, so projections reuse the domain's own types and
functions (``domain.postings.postings_for``) instead of re-deriving them from JSON."""

from __future__ import annotations

from typing import Any

from eventstore.contract import data_model, event_classes
from eventstore.envelope import Envelope


class UnknownEventType(Exception):
    """An event type this projection does not handle: stop rather than silently diverge."""


def domain_event(env: Envelope) -> Any:
    """The domain event an envelope was made from, with typed values (datetimes parsed)."""
    try:
        cls = event_classes()[env.type]
    except KeyError:
        raise UnknownEventType(env.type) from None
    fields = data_model(env.type).model_validate(env.data)
    return cls(
        originator_id=env.aggregate_id,
        originator_version=env.version,
        timestamp=env.occurred_at,
        **fields.__dict__,  # the validated values (faster than iterating the model)
    )

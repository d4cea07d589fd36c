"""Deterministic aggregate ids: repeating a command finds the aggregate it created before."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid5

# A fixed namespace for every id Pinksea derives; never change it (ids are stored).
PINKSEA_NAMESPACE = UUID("6a0d3b52-8a3b-4f5e-9a43-2f1c3c8e0b11")


def _derive(*parts: str) -> UUID:
    return uuid5(PINKSEA_NAMESPACE, "\x1f".join(parts))


def account_id(user_id: str) -> UUID:
    return _derive("credit-account", user_id)


def subscription_id(user_id: str) -> UUID:
    return _derive("subscription", user_id)


def job_id(user_id: str, idempotency_key: str, use: int = 0) -> UUID:
    """The job of a key's ``use``-th job: a key names a new job once its job before expired
    (domain/jobs.py, IDEMPOTENCY_KEY_TTL); the first use keeps the id jobs always had."""
    if use == 0:
        return _derive("job", user_id, idempotency_key)
    return _derive("job", user_id, idempotency_key, str(use))


def lot_id(kind: str, reference: str) -> str:
    """A lot's id from what granted it (invoice id, grant id, ...): a second grant is a no-op."""
    return str(_derive("lot", kind, reference))


def contract_period_reference(subscription_id: UUID, period_start: datetime) -> str:
    """What names a contract period (and, through lot_id, its lot): the subscription and the
    period's start, in UTC so the same instant always gives the same name."""
    return f"{subscription_id}:{period_start.astimezone(UTC).isoformat()}"


def board_id(user_id: str, request_key: str) -> UUID:
    return _derive("board", user_id, request_key)


def stripe_event_id(stripe_event_id: str) -> UUID:
    return _derive("stripe-event", stripe_event_id)

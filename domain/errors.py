"""Domain errors. Each carries a stable ``code`` that the API maps to a problem type."""

from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidParameters(DomainError):
    code = "invalid_parameters"


class InsufficientCredits(DomainError):
    code = "insufficient_credits"

    def __init__(self, requested_mc: int, available_mc: int) -> None:
        super().__init__(
            f"this needs {requested_mc} mc but only {available_mc} mc are available; "
            "buy a plan or wait for your next renewal"
        )
        self.requested_mc = requested_mc
        self.available_mc = available_mc


class UnknownHold(DomainError):
    code = "unknown_hold"


class HoldAlreadyResolved(DomainError):
    code = "hold_already_resolved"


class SettleExceedsHold(DomainError):
    code = "settle_exceeds_hold"


class IdempotencyConflict(DomainError):
    """The same id was used before for a command with different content."""

    code = "idempotency_conflict"


class AccountDeactivated(DomainError):
    """An admin deactivated the account: it may place no new holds (submit no jobs)."""

    code = "account_deactivated"


class InvalidTransition(DomainError):
    """The command is not allowed in the aggregate's current state."""

    code = "invalid_transition"


class NotFound(DomainError):
    code = "not_found"

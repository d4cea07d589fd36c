"""Domain errors. Each carries a stable ``code`` that the API maps to a problem type, and, when
the request's own fields are at fault, each of them (``fields``: the problem's ``errors``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One field of a request at fault: ``loc`` as the request spells it (``("init_image",)``,
    ``("loras", 0, "id")``), what is wrong, and ``code``: the error it is on its own
    (``NotFound.code``: it names nothing of the user's; else ``InvalidParameters.code``)."""

    loc: tuple[str | int, ...]
    msg: str
    code: str

    @property
    def where(self) -> str:
        """``loc`` written as in the request: ``loras[0].id``."""
        text = ""
        for part in self.loc:  # a field's path: a few names and indexes
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, detail: str, *, fields: Sequence[FieldProblem] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = tuple(fields)


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


def refused_inputs(problems: Sequence[FieldProblem]) -> DomainError:
    """One error naming every field at fault: NotFound when one of them names nothing of the
    user's, else InvalidParameters (the detail names each field as the request spells it)."""
    assert problems, "a refusal names at least one field"
    listed = "; ".join(f"{p.where}: {p.msg}" for p in problems)
    detail = f"The job cannot use {'these inputs' if len(problems) > 1 else 'this input'}: {listed}"
    if any(p.code == NotFound.code for p in problems):
        return NotFound(detail, fields=problems)
    return InvalidParameters(detail, fields=problems)

"""The command side: one eventsourcing Application holding every aggregate type.

Commands that touch a job and its credit account save both in one transaction, so a hold never
exists without its job (or the reverse). Every command is idempotent: ids derive from what the
caller sent (user, Idempotency-Key, invoice id, grant id), and a repeated command finds its
aggregate already there and changes nothing. Time is always an argument.

The commands themselves are in domain/commands/, grouped by aggregate and composed here, so
that this class says only what the store is: its name (the event tables), its snapshots, its
cache, and how lots and holds are encoded.
"""

from __future__ import annotations

from eventsourcing.persistence import JSONTranscoder

from domain.commands.accounts import AccountCommands
from domain.commands.boards import BoardCommands
from domain.commands.invoices import InvoiceCommands
from domain.commands.job_inputs import JobInputCommands
from domain.commands.jobs import JobCommands
from domain.commands.personal_data import PersonalDataCommands
from domain.commands.plans import PlanCommands
from domain.commands.results import (
    AccountStatusResult,
    CommandResult,
    DispatchResult,
    SettlementResult,
    SubmitResult,
)
from domain.commands.store import (
    MAX_CONFLICT_RETRIES,
    ConcurrencyConflict,
    StripeEventAlreadyApplied,
)
from domain.commands.subscriptions import TRIAL_GRANT_REFERENCE, BillingState, SubscriptionCommands
from domain.commands.uploads import UploadCommands
from domain.commands.user_models import UserModelCommands
from domain.credits import CreditAccount, HoldAsDict, LotAsDict


class PinkseaApplication(
    JobCommands,
    AccountCommands,
    SubscriptionCommands,
    InvoiceCommands,
    PlanCommands,
    JobInputCommands,
    UploadCommands,
    BoardCommands,
    UserModelCommands,
    PersonalDataCommands,
):
    name = "Pinksea"  # the event tables are pinksea_events and pinksea_snapshots
    snapshotting_intervals = {CreditAccount: 50}
    # Cached aggregates are fast-forwarded from the store on every read (one query instead of
    # snapshot + events), and deep-copied so a failed command never corrupts the cache.
    env = {"AGGREGATE_CACHE_MAXSIZE": "10000"}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(LotAsDict())
        transcoder.register(HoldAsDict())


__all__ = [
    "MAX_CONFLICT_RETRIES",
    "TRIAL_GRANT_REFERENCE",
    "AccountStatusResult",
    "BillingState",
    "CommandResult",
    "ConcurrencyConflict",
    "DispatchResult",
    "PinkseaApplication",
    "SettlementResult",
    "StripeEventAlreadyApplied",
    "SubmitResult",
]

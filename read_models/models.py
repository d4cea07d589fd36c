"""What the query functions return: small frozen records (the API's response models read
them by attribute, api/schemas.py).

Money is integer millicredits (``*_mc``), USD a Decimal, times timezone-aware datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from uuid import UUID

from domain.ledger_changes import StatementLine
from domain.parameters import JobParameters

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None  # None: this is the last page


@dataclass(frozen=True, slots=True)
class CreditLot:
    lot_id: str
    seq: int
    source: str
    amount_mc: int
    remaining_mc: int
    held_mc: int
    consumed_mc: int
    expired_mc: int
    debited_mc: int
    refunded_mc: int
    valid_from: datetime
    valid_until: datetime | None
    reference: str
    expired: bool
    spendable: bool  # at the time the balance was asked for


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    available_mc: int  # every lot's unspent remainder (the ledger balance)
    spendable_mc: int  # the part of it usable now: lots valid at the time asked
    held_mc: int
    granted_mc: int
    consumed_mc: int
    refunded_mc: int
    expired_mc: int
    debited_mc: int
    low_balance: bool  # below the plan's warning threshold
    position: int
    lots: tuple[CreditLot, ...]  # in spend order
    as_of: datetime  # the time spendable_mc and each lot's spendable were asked for


# A line of credit_transactions: the statement line `pinksea ledger statement` prints too.
LedgerEntry = StatementLine


@dataclass(frozen=True, slots=True)
class UsageBucket:
    key: str  # a UTC day (YYYY-MM-DD) or a model
    jobs: int
    gpu_ms: int
    charged_mc: int
    refunded_mc: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    group_by: str
    start: datetime
    end: datetime
    buckets: tuple[UsageBucket, ...]
    jobs: int
    gpu_ms: int
    charged_mc: int
    refunded_mc: int


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    job_id: UUID
    index: int
    key: str
    thumbnail_key: str
    size_bytes: int
    width: int
    height: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ImageDetail:
    """One of a user's images as GET /v1/images shows it: what it is, where it came from, its
    owner's flags, and the parameters of the job that made it (its generation metadata). An
    upload (``upload_id``, its name) was made by no job: it has no job, parameters or seed."""

    name: str
    job_id: UUID | None
    upload_id: UUID | None
    index: int
    key: str
    thumbnail_key: str
    size_bytes: int
    width: int
    height: int
    created_at: datetime
    image_category: str
    image_origin: str
    starred: bool
    is_intermediate: bool
    parameters: JobParameters | None  # the job's, as submitted (seed: the requested one, if any)
    seed: int | None  # the seed the job ran with
    # The job's personal fields as stored, sealed (domain/personal_data.py); the API opens them.
    sealed: Mapping[str, str]

    def __post_init__(self) -> None:
        assert (self.job_id is None) != (self.upload_id is None), "a job's image or an upload"
        assert (self.parameters is None) == (self.job_id is None)

    @property
    def uploaded(self) -> bool:
        return self.upload_id is not None


@dataclass(frozen=True, slots=True)
class ImageSource:
    """What made one of the user's images: a job (``job_id``) or an upload (``upload_id``)."""

    job_id: UUID | None
    upload_id: UUID | None


@dataclass(frozen=True, slots=True)
class Job:
    job_id: UUID
    status: str
    tier: str
    parameters: JobParameters  # as submitted (seed: the requested one, if any)
    seed: int  # the seed it runs with
    hold_mc: int
    budget_ms: int
    estimate_ms: int
    attempt: int
    cancel_requested: bool
    gpu_ms: int
    cuda_ms: int | None
    charged_mc: int
    refunded_mc: int
    image_count: int
    rejection_reason: str | None
    rejection_detail: str | None
    failure_reason: str | None
    failure_fault: str | None
    submitted_at: datetime
    accepted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    images: tuple[Image, ...] = ()  # filled by get_job only
    # Its personal fields as stored, sealed (domain/personal_data.py); the API opens them.
    sealed: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Plan:
    slug: str
    type: str
    usd_per_month: Decimal | None
    credits_per_month: int | None
    tier: str
    concurrent_jobs: int
    storage_gb: int
    model_access: str
    third_party_api: bool
    lora_training: bool
    collaboration: bool
    node_editor: bool
    api_access: bool
    max_open_jobs: int


@dataclass(frozen=True, slots=True)
class Subscription:
    plan: str
    status: str
    period_start: datetime
    period_end: datetime
    cancel_at: datetime | None
    external_id: str | None  # Stripe subscription
    customer_id: str | None  # Stripe customer
    custom_terms: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    created_at: datetime
    plan: Plan  # the plan whose entitlements apply now
    subscription: Subscription


@dataclass(frozen=True, slots=True)
class UserSummary:
    user_id: str
    plan: str
    subscription_status: str
    created_at: datetime


__all__ = [
    "Balance",
    "CreditLot",
    "Image",
    "Job",
    "LedgerEntry",
    "Page",
    "Plan",
    "Subscription",
    "UsageBucket",
    "UsageSummary",
    "User",
    "UserSummary",
]

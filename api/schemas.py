"""The API's JSON shapes. Money appears twice: integer millicredits (``*_mc``) for programs and
a credits string with three decimals (``*_credits``) for people; both come from one integer."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar, get_args
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from domain.catalog import MODELS
from domain.jobs import MAX_PROMPT_CHARS, MAX_SEED, SCHEDULERS
from domain.plans import PLANS, ModelAccess
from domain.plans import Plan as DomainPlan
from domain.units import format_credits
from read_models import models as rm

T = TypeVar("T")

Credits = str  # "12.345"
SchedulerName = Literal["ddim", "dpm++_2m", "euler", "euler_a", "lms", "pndm"]
PlanSlug = Literal["starter", "pro", "studio", "enterprise", "tester", "trial"]
# Spelled out for the type checker; they must stay the domain's own sets.
assert set(get_args(SchedulerName)) == SCHEDULERS
assert set(get_args(PlanSlug)) == set(PLANS)
TierName = Literal["basic", "high_performance", "dedicated"]


# Text that ends up in events and read models: NUL cannot be stored in PostgreSQL text.
NO_NUL = r"^[^\x00]*$"
USER_ID = r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"  # as api/auth.py accepts in tokens


def credits(mc: int) -> Credits:
    return format_credits(mc)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------- jobs


class JobRequest(Strict):
    model: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["tiny-sd"])
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL, examples=["a lighthouse"]
    )
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)
    steps: int = Field(ge=1, le=150, examples=[4])
    width: int = Field(ge=8, le=4096, examples=[64])
    height: int = Field(ge=8, le=4096, examples=[64])
    batch_size: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    guidance_scale: float = Field(7.5, ge=0, le=30, allow_inf_nan=False)
    scheduler: SchedulerName | None = None


class JobAccepted(BaseModel):
    job_id: UUID
    status: str
    hold_mc: int
    hold_credits: Credits
    budget_ms: int = Field(description="GPU time the hold pays for; the run stops there")
    position: int = Field(description="send as X-Min-Position to read this job back")
    replayed: bool = Field(description="true: this Idempotency-Key was seen before")


class CancelAccepted(BaseModel):
    job_id: UUID
    status: str
    cancel_requested: bool = Field(description="a running job stops within one step")
    position: int


class JobImage(BaseModel):
    name: str
    index: int
    size_bytes: int
    width: int
    height: int
    href: str


class JobView(BaseModel):
    job_id: UUID
    status: str
    model: str
    tier: str
    prompt: str
    negative_prompt: str
    steps: int
    width: int
    height: int
    batch_size: int
    seed: int
    guidance_scale: float | None
    scheduler: str | None
    attempt: int
    cancel_requested: bool
    hold_mc: int
    hold_credits: Credits
    budget_ms: int
    estimate_ms: int
    gpu_ms: int
    cuda_ms: int | None
    charged_mc: int
    charged_credits: Credits
    refunded_mc: int
    refunded_credits: Credits
    image_count: int
    images: list[JobImage]
    rejection_reason: str | None
    rejection_detail: str | None
    failure_reason: str | None
    failure_fault: str | None
    submitted_at: datetime
    accepted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: rm.Job) -> JobView:
        params: dict[str, Any] = job.parameters
        return cls(
            job_id=job.job_id,
            status=job.status,
            model=job.model,
            tier=job.tier,
            prompt=str(params.get("prompt", "")),
            negative_prompt=str(params.get("negative_prompt") or ""),
            steps=job.steps,
            width=job.width,
            height=job.height,
            batch_size=job.batch_size,
            seed=job.seed,
            guidance_scale=params.get("guidance_scale"),
            scheduler=params.get("scheduler"),
            attempt=job.attempt,
            cancel_requested=job.cancel_requested,
            hold_mc=job.hold_mc,
            hold_credits=credits(job.hold_mc),
            budget_ms=job.budget_ms,
            estimate_ms=job.estimate_ms,
            gpu_ms=job.gpu_ms,
            cuda_ms=job.cuda_ms,
            charged_mc=job.charged_mc,
            charged_credits=credits(job.charged_mc),
            refunded_mc=job.refunded_mc,
            refunded_credits=credits(job.refunded_mc),
            image_count=job.image_count,
            images=[
                JobImage(
                    name=i.name,
                    index=i.index,
                    size_bytes=i.size_bytes,
                    width=i.width,
                    height=i.height,
                    href=f"/v1/images/{i.name}",
                )
                for i in job.images
            ],
            rejection_reason=job.rejection_reason,
            rejection_detail=job.rejection_detail,
            failure_reason=job.failure_reason,
            failure_fault=job.failure_fault,
            submitted_at=job.submitted_at,
            accepted_at=job.accepted_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


# --------------------------------------------------------------------------------- images


class ImageView(BaseModel):
    name: str
    job_id: UUID
    index: int
    size_bytes: int
    width: int
    height: int
    created_at: datetime
    url: str = Field(description="signed URL of the PNG (CloudFront; S3 presigned without a CDN)")
    thumbnail_url: str = Field(description="signed URL of the WebP thumbnail")
    urls_expire_at: datetime


# ------------------------------------------------------------------------ credits and usage


class LotView(BaseModel):
    lot_id: str
    source: str
    amount_mc: int
    amount_credits: Credits
    remaining_mc: int
    remaining_credits: Credits
    held_mc: int
    consumed_mc: int
    expired_mc: int
    debited_mc: int
    refunded_mc: int
    valid_from: datetime
    valid_until: datetime | None
    expired: bool
    spendable: bool = Field(description="usable now (valid and not expired)")

    @classmethod
    def of(cls, lot: rm.CreditLot) -> LotView:
        return cls(
            lot_id=lot.lot_id,
            source=lot.source,
            amount_mc=lot.amount_mc,
            amount_credits=credits(lot.amount_mc),
            remaining_mc=lot.remaining_mc,
            remaining_credits=credits(lot.remaining_mc),
            held_mc=lot.held_mc,
            consumed_mc=lot.consumed_mc,
            expired_mc=lot.expired_mc,
            debited_mc=lot.debited_mc,
            refunded_mc=lot.refunded_mc,
            valid_from=lot.valid_from,
            valid_until=lot.valid_until,
            expired=lot.expired,
            spendable=lot.spendable,
        )


class BalanceView(BaseModel):
    user_id: str
    available_mc: int = Field(description="spendable now: valid lots, minus holds")
    available_credits: Credits
    held_mc: int = Field(description="reserved by unfinished jobs")
    held_credits: Credits
    unspent_mc: int = Field(description="every lot's remainder, including not-yet-valid ones")
    unspent_credits: Credits
    granted_mc: int
    consumed_mc: int
    refunded_mc: int
    expired_mc: int
    debited_mc: int
    lots: list[LotView] = Field(description="in spend order")
    position: int = Field(description="store position of the last credit event applied")
    as_of: datetime

    @classmethod
    def of(cls, b: rm.Balance, at: datetime) -> BalanceView:
        return cls(
            user_id=b.user_id,
            available_mc=b.spendable_mc,
            available_credits=credits(b.spendable_mc),
            held_mc=b.held_mc,
            held_credits=credits(b.held_mc),
            unspent_mc=b.available_mc,
            unspent_credits=credits(b.available_mc),
            granted_mc=b.granted_mc,
            consumed_mc=b.consumed_mc,
            refunded_mc=b.refunded_mc,
            expired_mc=b.expired_mc,
            debited_mc=b.debited_mc,
            lots=[LotView.of(lot) for lot in b.lots],
            position=b.position,
            as_of=at,
        )


class LedgerLine(BaseModel):
    event_id: str
    position: int
    occurred_at: datetime
    kind: str
    job_id: str | None
    lot_id: str | None
    amount_mc: int = Field(description="change of the available balance")
    amount_credits: Credits
    held_change_mc: int
    held_change_credits: Credits
    available_after_mc: int
    available_after_credits: Credits
    held_after_mc: int
    held_after_credits: Credits
    description: str

    @classmethod
    def of(cls, e: rm.LedgerEntry) -> LedgerLine:
        return cls(
            event_id=e.event_id,
            position=e.position,
            occurred_at=e.occurred_at,
            kind=e.kind,
            job_id=e.job_id,
            lot_id=e.lot_id,
            amount_mc=e.amount_mc,
            amount_credits=credits(e.amount_mc),
            held_change_mc=e.held_change_mc,
            held_change_credits=credits(e.held_change_mc),
            available_after_mc=e.available_after_mc,
            available_after_credits=credits(e.available_after_mc),
            held_after_mc=e.held_after_mc,
            held_after_credits=credits(e.held_after_mc),
            description=e.description,
        )


class UsageBucketView(BaseModel):
    key: str = Field(description="a UTC day (YYYY-MM-DD) or a model")
    jobs: int
    gpu_ms: int
    charged_mc: int
    charged_credits: Credits
    refunded_mc: int
    refunded_credits: Credits


class UsageView(BaseModel):
    group_by: str
    from_: datetime = Field(alias="from")
    to: datetime
    buckets: list[UsageBucketView]
    jobs: int
    gpu_ms: int
    charged_mc: int
    charged_credits: Credits
    refunded_mc: int
    refunded_credits: Credits

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @classmethod
    def of(cls, u: rm.UsageSummary) -> UsageView:
        return cls(
            group_by=u.group_by,
            **{"from": u.start},
            to=u.end,
            buckets=[
                UsageBucketView(
                    key=b.key,
                    jobs=b.jobs,
                    gpu_ms=b.gpu_ms,
                    charged_mc=b.charged_mc,
                    charged_credits=credits(b.charged_mc),
                    refunded_mc=b.refunded_mc,
                    refunded_credits=credits(b.refunded_mc),
                )
                for b in u.buckets
            ],
            jobs=u.jobs,
            gpu_ms=u.gpu_ms,
            charged_mc=u.charged_mc,
            charged_credits=credits(u.charged_mc),
            refunded_mc=u.refunded_mc,
            refunded_credits=credits(u.refunded_mc),
        )


# ---------------------------------------------------------------------------- plans, me


class PlanView(BaseModel):
    slug: str
    type: str
    usd_per_month: str | None = Field(description="null: negotiated")
    credits_per_month: int | None
    credits_per_month_mc: int | None
    tier: str
    concurrent_jobs: int
    max_open_jobs: int
    storage_gb: int
    model_access: str
    models: list[str] = Field(description="models this plan may run")
    third_party_api: bool
    lora_training: bool
    collaboration: bool
    node_editor: bool
    api_access: bool

    @classmethod
    def of(cls, plan: DomainPlan) -> PlanView:
        return cls(
            slug=plan.slug,
            type=plan.type.value,
            usd_per_month=None if plan.usd_per_month is None else f"{plan.usd_per_month:.2f}",
            credits_per_month=plan.credits_per_month,
            credits_per_month_mc=(
                None if plan.credits_per_month is None else plan.credits_per_month_mc
            ),
            tier=plan.tier.value,
            concurrent_jobs=plan.concurrent_jobs,
            max_open_jobs=plan.max_open_jobs,
            storage_gb=plan.storage_gb,
            model_access=plan.model_access.value,
            models=[k for k, m in MODELS.items() if plan.model_access.allows(m.access)],
            third_party_api=plan.third_party_api,
            lora_training=plan.lora_training,
            collaboration=plan.collaboration,
            node_editor=plan.node_editor,
            api_access=plan.api_access,
        )

    @classmethod
    def of_row(cls, plan: rm.Plan) -> PlanView:
        access = ModelAccess(plan.model_access)
        return cls(
            slug=plan.slug,
            type=plan.type,
            usd_per_month=None if plan.usd_per_month is None else f"{plan.usd_per_month:.2f}",
            credits_per_month=plan.credits_per_month,
            credits_per_month_mc=(
                None if plan.credits_per_month is None else plan.credits_per_month * 1000
            ),
            tier=plan.tier,
            concurrent_jobs=plan.concurrent_jobs,
            max_open_jobs=plan.max_open_jobs,
            storage_gb=plan.storage_gb,
            model_access=plan.model_access,
            models=[k for k, m in MODELS.items() if access.allows(m.access)],
            third_party_api=plan.third_party_api,
            lora_training=plan.lora_training,
            collaboration=plan.collaboration,
            node_editor=plan.node_editor,
            api_access=plan.api_access,
        )


class SubscriptionView(BaseModel):
    plan: str
    status: str
    period_start: datetime
    period_end: datetime
    cancel_at: datetime | None
    custom_terms: dict[str, Any] | None


class MeView(BaseModel):
    user_id: str
    email: str | None
    created_at: datetime | None
    plan: PlanView = Field(description="the plan whose entitlements apply now")
    subscription: SubscriptionView
    storage_used_bytes: int
    storage_quota_bytes: int
    low_balance: bool = Field(
        description="available credit is below a tenth of the plan's monthly credits"
    )
    low_balance_emails: bool = Field(
        description="an e-mail each time the balance falls below that line (PATCH to change)"
    )
    notification_email: str | None = Field(
        description="where those e-mails go: the e-mail of your latest sign-in; null: none known"
    )
    auth: Literal["jwt", "api_key"]
    is_admin: bool


class MeUpdate(Strict):
    """The settings of your own account you may change; leave out what stays as it is."""

    low_balance_emails: StrictBool | None = Field(
        None, description="false: no more low-balance e-mails; true: e-mail again"
    )


class UserSummaryView(BaseModel):
    user_id: str
    plan: str
    subscription_status: str
    created_at: datetime


# ------------------------------------------------------------------------------- API keys


class ApiKeyRequest(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL, examples=["ci"])
    expires_at: datetime | None = Field(None, description="timezone-aware; null: never")


class ApiKeyCreated(BaseModel):
    id: UUID
    name: str
    prefix: str
    key: str | None = Field(
        description="the secret, shown only in the first response; null on a replay"
    )
    created_at: datetime
    expires_at: datetime | None


class ApiKeyView(BaseModel):
    id: UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


# ---------------------------------------------------------------------------------- admin

CreditsAmount = Decimal


class GrantRequest(Strict):
    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID)
    credits: Decimal = Field(gt=0, le=10**9, decimal_places=3, description="e.g. 100 or '2.5'")
    valid_from: datetime | None = Field(None, description="default: now")
    valid_until: datetime | None = Field(None, description="null: never expires")
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)
    plan: Literal["tester"] | None = Field(
        None, description="'tester': also put the user on the tester plan (needs valid_until)"
    )


class GrantResult(BaseModel):
    grant_id: str
    user_id: str
    amount_mc: int
    amount_credits: Credits
    plan: str | None
    changed: bool
    position: int


class AdjustmentRequest(Strict):
    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID)
    credits: Decimal = Field(
        ge=-(10**9), le=10**9, decimal_places=3, description="positive adds, negative debits"
    )
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class AdjustmentResult(BaseModel):
    adjustment_id: str
    user_id: str
    amount_mc: int
    amount_credits: Credits
    changed: bool
    position: int


class RefundRequest(Strict):
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class RefundResult(BaseModel):
    job_id: UUID
    refunded_mc: int
    refunded_credits: Credits
    changed: bool
    position: int


class CustomTermsBody(Strict):
    credits_per_month: int = Field(gt=0, le=10**9)
    tier: TierName
    concurrent_jobs: int = Field(gt=0, le=10_000)
    storage_gb: int = Field(ge=0, le=10**6)


class PlanChangeRequest(Strict):
    plan: PlanSlug
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)
    custom_terms: CustomTermsBody | None = Field(None, description="enterprise terms")


class PlanChangeResult(BaseModel):
    user_id: str
    plan: str
    changed: bool
    position: int


class AccountStatusRequest(Strict):
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class AccountStatusResult(BaseModel):
    user_id: str
    deactivated: bool
    changed: bool = Field(description="false: the account was in that state already")
    cancelled_jobs: list[UUID] = Field(
        default_factory=list, description="queued jobs cancelled, their holds voided"
    )
    stopping_jobs: list[UUID] = Field(
        default_factory=list,
        description="running jobs asked to stop within a step (the GPU time used is billed)",
    )
    position: int

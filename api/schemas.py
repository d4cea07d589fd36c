"""The API's JSON shapes. Money appears twice: integer millicredits (``*_mc``) for programs and
a credits string with three decimals (``*_credits``) for people; both come from one integer
(the strings are computed fields of the integers).

Responses are read from what the queries return (``read_models.models``) or from domain
objects, attribute by attribute: ``View.model_validate(row)``; where the public name differs
from the row's, the field says where it reads from (``validation_alias``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args
from uuid import UUID

from pydantic import (
    AliasChoices,
    AliasPath,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    computed_field,
    model_validator,
)
from pydantic.fields import FieldInfo

from api.failures import public_failure_reason
from domain.catalog import MODELS, ModelFamily
from domain.job_events import ImageCategory, ImageOrigin, JobStatus
from domain.job_lifecycle import Fault, RejectionReason
from domain.job_webhooks import JobSubmission
from domain.ledger_changes import LineKind
from domain.lots import LotSource
from domain.parameters import NO_NUL, JobParameters, LoraRef, SchedulerName, Seed
from domain.plans import PLAN_FLAGS, PLANS, FlagStatus, GpuTier, ModelAccess, PlanType
from domain.subscription_events import SubscriptionStatus
from domain.units import MC_PER_CREDIT, format_credits

T = TypeVar("T")

Credits = str  # "12.345"
PlanSlug = Literal["starter", "pro", "studio", "enterprise", "tester", "trial"]
# Spelled out for the type checker; it must stay the domain's own set.
assert set(get_args(PlanSlug)) == set(PLANS)


USER_ID = r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"  # as api/auth.py accepts in tokens


def credits_of(mc_field: str) -> Any:
    """A computed field: the credits string of the integer field ``mc_field``. Declared as
    ``x_credits: ClassVar[Credits] = credits_of("x_mc")`` next to its integer (a property is
    a class attribute: ClassVar keeps it out of the type checker's fields and ``__init__``;
    pydantic serialises it with the fields, read-only in the schema)."""

    def from_mc(self: BaseModel) -> Credits:
        return format_credits(getattr(self, mc_field))

    return computed_field(return_type=Credits)(property(from_mc))


class View(BaseModel):
    """A response model, read by attribute from a read-model row or a domain object."""

    model_config = ConfigDict(from_attributes=True)


class Page(View, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------- jobs


# The parameters' one definition (domain/parameters.py), with the submission's own webhook
# (domain/job_webhooks.py), named for the API document.
class JobRequest(JobSubmission):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "sd-1.5",
                    "prompt": "a pink sea at dawn, oil painting",
                    "steps": 25,
                    "width": 512,
                    "height": 512,
                },
                {
                    "model": "sdxl-base-1.0",
                    "prompt": "a lighthouse in a storm",
                    "negative_prompt": "blurry",
                    "steps": 30,
                    "width": 1024,
                    "height": 1024,
                    "seed": 42,
                    "webhook": "https://example.com/pinksea-hook",
                    "webhook_events_filter": ["job.completed", "job.failed"],
                },
            ]
        }
    )


class JobAccepted(View):
    job_id: UUID
    status: JobStatus
    hold_mc: int
    hold_credits: ClassVar[Credits] = credits_of("hold_mc")
    budget_ms: int = Field(description="GPU time the hold pays for; the run stops there")
    position: int = Field(description="send as X-Min-Position to read this job back")
    replayed: bool = Field(description="true: this Idempotency-Key was seen before")


class CancelAccepted(BaseModel):
    job_id: UUID
    status: JobStatus
    cancel_requested: bool = Field(description="a running job stops within one step")
    position: int


class JobImage(View):
    name: str
    index: int
    size_bytes: int
    width: int
    height: int

    url: str | None = Field(
        None, description="signed URL of the PNG, fresh on each read of one job; null in lists"
    )
    thumbnail_url: str | None = Field(None, description="signed URL of the WebP thumbnail")
    urls_expire_at: datetime | None = Field(None, description="when both URLs stop working")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def href(self) -> str:
        return f"/v1/images/{self.name}"


class QueueBasis(BaseModel):
    """What the ETA is computed from (read_models/queue.py)."""

    tier: GpuTier
    jobs_ahead: int = Field(description="queued jobs of the tier that arrived before this one")
    in_service: int = Field(description="jobs of the tier dispatched or running now")
    sampled_jobs: int = Field(description="recent completed jobs of the tier measured (max 50)")
    mean_run_ms: int | None = Field(
        description="their mean start-to-finish time; null: none measured yet"
    )
    workers: int | None = Field(
        description="distinct workers that finished one within 15 minutes; null: unknown "
        "(the ETA assumes one)"
    )


class QueueView(BaseModel):
    """Where a queued (accepted) job stands in its tier's queue, in arrival order."""

    position: int = Field(description="1: the next of its tier to be dispatched")
    start_in_ms: int | None = Field(description="expected wait until it starts; null: no basis")
    done_in_ms: int | None = Field(description="expected time until it finishes; null: no basis")
    basis: QueueBasis


class StreamToken(BaseModel):
    token: str = Field(description="send as ?access_token= on this job's event stream only")
    expires_at: datetime = Field(description="open the stream before then (a few minutes)")
    url: str = Field(description="the job's event stream with the token, for EventSource")


def _parameter(name: str) -> Any:
    """A job parameter: the row's ``parameters`` hold it (a view read back from JSON, its own)."""
    return Field(validation_alias=AliasChoices(name, AliasPath("parameters", name)))


class JobView(View):
    job_id: UUID
    status: JobStatus
    model: str = _parameter("model")
    tier: GpuTier
    prompt: str = _parameter("prompt")
    negative_prompt: str = _parameter("negative_prompt")
    steps: int = _parameter("steps")
    width: int = _parameter("width")
    height: int = _parameter("height")
    batch_size: int = _parameter("batch_size")
    seed: int = Field(description="the seed the job runs with (the requested one, or derived)")
    guidance_scale: float | None = _parameter("guidance_scale")
    scheduler: SchedulerName | None = _parameter("scheduler")
    style_preset: str | None = Field(
        None,
        validation_alias=AliasChoices("style_preset", AliasPath("parameters", "style_preset")),
        description="the style preset the job named; prompt and negative_prompt are as its "
        "templates made them",
    )
    attempt: int
    cancel_requested: bool
    hold_mc: int
    hold_credits: ClassVar[Credits] = credits_of("hold_mc")
    budget_ms: int
    estimate_ms: int
    gpu_ms: int
    cuda_ms: int | None
    charged_mc: int
    charged_credits: ClassVar[Credits] = credits_of("charged_mc")
    refunded_mc: int
    refunded_credits: ClassVar[Credits] = credits_of("refunded_mc")
    image_count: int
    images: list[JobImage]
    rejection_reason: RejectionReason | None
    rejection_detail: str | None
    failure_reason: str | None = Field(
        description="what went wrong, for the job's owner (one sentence per kind of failure)"
    )
    failure_fault: Fault | None
    submitted_at: datetime
    accepted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    queue: QueueView | None = Field(
        None, description="its place in its tier's queue and ETA; null when not queued"
    )

    @model_validator(mode="after")
    def _public_failure_reason(self) -> JobView:
        # The worker's text is for operators (paths, hosts): api/failures.py. Idempotent.
        self.failure_reason = public_failure_reason(self.failure_reason, self.failure_fault)
        return self


# --------------------------------------------------------------------------------- images


class ImageMetadata(View):
    """What made the image (InvokeAI's recall parameters), read from its job's parameters with
    the seed it ran with: send them to POST /v1/jobs, or remix the image, to make it again."""

    model: str
    prompt: str
    negative_prompt: str
    seed: int = Field(description="the seed the job ran with (the requested one, or derived)")
    steps: int
    scheduler: SchedulerName | None = Field(description="null: the model's default scheduler")
    guidance_scale: float
    width: int
    height: int
    init_image: str | None = Field(
        description="image-to-image: the upload or image it started from"
    )
    strength: float | None
    mask: str | None = Field(description="inpainting: the upload that masked the init image")
    scale: int | None = Field(description="upscaling: the factor")
    loras: list[LoraRef] | None = Field(description="the LoRAs applied, with their weights")
    style_preset: str | None = Field(
        description="the style preset the job named (prompt and negative_prompt are as its "
        "templates made them)"
    )


class ImageView(View):
    name: str = Field(description="an upload's is its upload id (a job's init_image takes it)")
    job_id: UUID | None = Field(description="the job that made it; null for an upload")
    upload_id: UUID | None = Field(description="the upload it is; null for a job's image")
    index: int
    size_bytes: int
    width: int
    height: int
    created_at: datetime
    image_category: ImageCategory = Field(
        description="what the image is for (InvokeAI's categories): a job's output is general"
    )
    image_origin: ImageOrigin = Field(
        description="internal: made here by a job; external: uploaded"
    )
    starred: bool
    is_intermediate: bool = Field(
        description="a step on the way, not a result: GET /v1/images leaves it out by default"
    )
    metadata: ImageMetadata | None = Field(
        description="its generation metadata; null for an upload, which no job made"
    )
    url: str = Field(
        description="signed URL of the PNG (an upload's: of its file as uploaded; CloudFront, "
        "or S3 presigned without a CDN)"
    )
    thumbnail_url: str = Field(
        description="signed URL of the WebP thumbnail (an upload's: of its file, it has none)"
    )
    urls_expire_at: datetime


class ImageUpdate(Strict):
    """The flags to change; a flag left out (or null) stays as it is."""

    starred: StrictBool | None = None
    is_intermediate: StrictBool | None = None


def _override(name: str) -> Any:
    """A remix override: the job parameter ``name``'s own bounds and description
    (domain/parameters.py), optional (absent or null: the image's own)."""
    return FieldInfo.merge_field_infos(JobParameters.model_fields[name], default=None)


class RemixRequest(Strict):
    """A new job from an image's parameters: each field sent replaces the image's; ``seed`` left
    out is a fresh one (send the image's ``metadata.seed`` to keep it)."""

    prompt: str | None = _override("prompt")
    negative_prompt: str | None = _override("negative_prompt")
    seed: Seed | None = None
    steps: int | None = _override("steps")
    guidance_scale: float | None = _override("guidance_scale")
    scheduler: SchedulerName | None = None
    width: int | None = _override("width")
    height: int | None = _override("height")
    batch_size: int | None = _override("batch_size")
    strength: float | None = _override("strength")


# ------------------------------------------------------------------------ credits and usage


class LotView(View):
    lot_id: str
    source: LotSource
    amount_mc: int
    amount_credits: ClassVar[Credits] = credits_of("amount_mc")
    remaining_mc: int
    remaining_credits: ClassVar[Credits] = credits_of("remaining_mc")
    held_mc: int
    consumed_mc: int
    expired_mc: int
    debited_mc: int
    refunded_mc: int
    valid_from: datetime
    valid_until: datetime | None
    expired: bool
    spendable: bool = Field(description="usable now (valid and not expired)")


class BalanceView(View):
    user_id: str
    # The row's available_mc is every lot's remainder (the ledger's word), spendable_mc the
    # part usable now; the public names are available (usable now) and unspent. Each field
    # tries first the name only one of its sources has (the row's spendable_mc, the view's
    # own unspent_mc), so a row and a cached view's JSON both read right.
    available_mc: int = Field(
        validation_alias=AliasChoices("spendable_mc", "available_mc"),
        description="spendable now: valid lots, minus holds",
    )
    available_credits: ClassVar[Credits] = credits_of("available_mc")
    held_mc: int = Field(description="reserved by unfinished jobs")
    held_credits: ClassVar[Credits] = credits_of("held_mc")
    unspent_mc: int = Field(
        validation_alias=AliasChoices("unspent_mc", "available_mc"),
        description="every lot's remainder, including not-yet-valid ones",
    )
    unspent_credits: ClassVar[Credits] = credits_of("unspent_mc")
    granted_mc: int
    consumed_mc: int
    refunded_mc: int
    expired_mc: int
    debited_mc: int
    lots: list[LotView] = Field(description="in spend order")
    position: int = Field(description="store position of the last credit event applied")
    as_of: datetime


class LedgerLine(View):
    event_id: str
    position: int
    occurred_at: datetime
    kind: LineKind
    job_id: str | None
    lot_id: str | None
    amount_mc: int = Field(description="change of the available balance")
    amount_credits: ClassVar[Credits] = credits_of("amount_mc")
    held_change_mc: int
    held_change_credits: ClassVar[Credits] = credits_of("held_change_mc")
    available_after_mc: int
    available_after_credits: ClassVar[Credits] = credits_of("available_after_mc")
    held_after_mc: int
    held_after_credits: ClassVar[Credits] = credits_of("held_after_mc")
    description: str


class UsageBucketView(View):
    key: str = Field(description="a UTC day (YYYY-MM-DD) or a model")
    jobs: int
    gpu_ms: int
    charged_mc: int
    charged_credits: ClassVar[Credits] = credits_of("charged_mc")
    refunded_mc: int
    refunded_credits: ClassVar[Credits] = credits_of("refunded_mc")


class UsageView(View):
    group_by: str
    from_: datetime = Field(validation_alias="start", serialization_alias="from")
    to: datetime = Field(validation_alias="end")
    buckets: list[UsageBucketView]
    jobs: int
    gpu_ms: int
    charged_mc: int
    charged_credits: ClassVar[Credits] = credits_of("charged_mc")
    refunded_mc: int
    refunded_credits: ClassVar[Credits] = credits_of("refunded_mc")

    model_config = ConfigDict(serialize_by_alias=True)


# ---------------------------------------------------------------------------- plans, me


def _usd(amount: Decimal | str | None) -> str | None:
    return None if amount is None else f"{Decimal(amount):.2f}"


class PlanFlagView(BaseModel):
    flag: str = Field(description="the plan's boolean field of the same name")
    enabled: bool = Field(description="this plan's value")
    status: FlagStatus = Field(
        description="gates: the feature is offered and refused without the flag; not_offered: "
        "the feature is not offered yet, so the flag gates nothing today"
    )
    meaning: str


class PlanView(View):
    # Read from a domain Plan (the one whose terms apply to you) or a row of the plan table.
    slug: PlanSlug
    type: PlanType
    usd_per_month: Annotated[str | None, BeforeValidator(_usd)] = Field(
        description="null: negotiated"
    )
    credits_per_month: int | None
    tier: GpuTier
    concurrent_jobs: int
    max_open_jobs: int
    storage_gb: int
    model_access: ModelAccess
    third_party_api: bool
    lora_training: bool
    collaboration: bool
    node_editor: bool
    api_access: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def credits_per_month_mc(self) -> int | None:
        return None if self.credits_per_month is None else self.credits_per_month * MC_PER_CREDIT

    @computed_field(description="models this plan may run")  # type: ignore[prop-decorator]
    @property
    def models(self) -> list[str]:
        access = ModelAccess(self.model_access)
        return [key for key, model in MODELS.items() if access.allows(model.access)]

    @computed_field(  # type: ignore[prop-decorator]
        description="every boolean entitlement above, what it gates or that it is not offered yet"
    )
    @property
    def flags(self) -> list[PlanFlagView]:
        return [
            PlanFlagView(flag=name, enabled=getattr(self, name), status=f.status, meaning=f.meaning)
            for name, f in PLAN_FLAGS.items()
        ]


class SubscriptionView(View):
    plan: PlanSlug = Field(validation_alias=AliasChoices("plan_slug", "plan"))  # aggregate, row
    status: SubscriptionStatus
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


class UserSummaryView(View):
    user_id: str
    plan: PlanSlug
    subscription_status: SubscriptionStatus
    created_at: datetime


# ------------------------------------------------------------------------------- API keys


class ApiKeyRequest(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL, examples=["ci"])
    expires_at: datetime | None = Field(None, description="timezone-aware; null: never")


class ApiKeyCreated(BaseModel):
    id: UUID
    name: str
    prefix: str
    key: str = Field(
        description="the secret, shown only in this response (a replay is a 409: the secret "
        "is stored only as a hash)"
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
    amount_credits: ClassVar[Credits] = credits_of("amount_mc")
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
    amount_credits: ClassVar[Credits] = credits_of("amount_mc")
    changed: bool
    position: int


class RefundRequest(Strict):
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class RefundResult(BaseModel):
    job_id: UUID
    refunded_mc: int
    refunded_credits: ClassVar[Credits] = credits_of("refunded_mc")
    changed: bool
    position: int


class CustomTermsBody(Strict):
    credits_per_month: int = Field(gt=0, le=10**9)
    tier: GpuTier
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


class ErasureView(View):
    """What an erasure of personal data did (DELETE /v1/me; the admin's route)."""

    user_id: str
    changed: bool = Field(description="false: nothing was left to erase (a repeat)")
    key_destroyed: bool = Field(
        description="the data key that sealed your prompts was destroyed now: they read "
        '"[erased]" everywhere from now on (false: none was left)'
    )
    cancelled_jobs: int = Field(description="unfinished jobs cancelled (their holds voided)")
    images_deleted: int
    uploads_deleted: int
    models_deleted: int = Field(description="your LoRAs deleted")
    objects_deleted: int = Field(description="files removed from storage")
    position: int
    complete: bool = Field(
        description="false: this request did its bounded share of a large account and more is "
        "left (the answer is a 202): send the same request again, after Retry-After, until "
        'it is true. Your prompts and board names read "[erased]" from the first request on'
    )


# ---------------------------------------------------------------------- models and quotes


class StepRange(BaseModel):
    min: int
    max: int
    default: int = Field(description="the model's usual step count")


class SizeRangeView(View):
    min_px: int
    max_px: int
    multiple: int = Field(description="width and height must be multiples of this")


class ModelDefaults(BaseModel):
    steps: int
    width: int
    height: int
    batch_size: int
    guidance_scale: float
    scheduler: SchedulerName | None = Field(description="null: the model's own scheduler")


class TierCost(BaseModel):
    tier: GpuTier
    estimate_ms: int = Field(description="expected GPU time of the default parameters")
    hold_mc: int = Field(description="held at submission, and the most such a job can cost")
    hold_credits: ClassVar[Credits] = credits_of("hold_mc")


# ---------------------------------------------------------------------------- style presets


class PresetDataView(View):
    positive_prompt: str = Field(
        description="the prompt's template: `{prompt}` is replaced by your prompt (without "
        "one, the template is appended to it after a space)"
    )
    negative_prompt: str = Field(
        description="the negative prompt's template, applied to your negative_prompt the same way"
    )


class StylePresetView(View):
    """A system style preset (InvokeAI's fields); name its id as a job's `style_preset`."""

    id: str
    name: str
    type: Literal["default"] = Field(description="InvokeAI's type: default (a system preset)")
    preset_data: PresetDataView


class ModelView(BaseModel):
    key: str
    family: ModelFamily
    access: ModelAccess = Field(description="the plan model access this model needs")
    sizes: SizeRangeView
    steps: StepRange
    defaults: ModelDefaults
    schedulers: list[SchedulerName]
    costs: list[TierCost] = Field(description="the default parameters' cost on every tier")
    your_tier: GpuTier = Field(description="the tier your plan runs on")
    allowed: bool = Field(description="whether your plan may run this model")
    reason: RejectionReason | None = Field(
        description="why not (a submission's rejection reason); null"
    )
    detail: str | None = Field(description="the sentence a submission would answer; null")


class JobQuote(BaseModel):
    model: str
    tier: GpuTier = Field(description="the tier your plan runs the job on")
    estimate_ms: int = Field(description="expected GPU time")
    hold_mc: int = Field(description="what a submission holds now")
    hold_credits: ClassVar[Credits] = credits_of("hold_mc")
    budget_ms: int = Field(description="GPU time the hold pays for; the run stops there")
    max_charge_mc: int = Field(
        description="the most this job can ever be charged: the hold is the job's time budget "
        "(the worker stops the run when its GPU time reaches it), so no job costs more than "
        "its hold; the unused rest is released"
    )
    max_charge_credits: ClassVar[Credits] = credits_of("max_charge_mc")
    available_mc: int = Field(description="your available balance now (held credits excluded)")
    available_credits: ClassVar[Credits] = credits_of("available_mc")
    affordable: bool = Field(description="the available balance covers the hold")
    allowed: bool = Field(description="a submission of this body now would be accepted")
    reason: RejectionReason | None = Field(
        description="the rejection reason a submission would give "
        "(insufficient_credits, model_not_in_plan, queue_limit, storage_quota, "
        "payment_failed); null when allowed"
    )
    detail: str | None = Field(description="the sentence the rejection would carry; null")
    problem_type: str | None = Field(description="the rejection's problem type URI; null")
    submit_status: int = Field(description="the status a submission would answer: 202, 402, 403")

"""The operator's plan table as domain data (README, "Billing policy")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from domain.units import MC_PER_CREDIT


class GpuTier(StrEnum):
    BASIC = "basic"  # NVIDIA T4
    HIGH_PERFORMANCE = "high_performance"  # NVIDIA A10G
    DEDICATED = "dedicated"  # NVIDIA A100


class ModelAccess(StrEnum):
    """Which models a plan may run; each class includes the ones before it."""

    SD_ONLY = "sd_only"
    FLUX_INCLUDED = "flux_included"
    FULL = "full"

    def allows(self, required: ModelAccess) -> bool:
        order = list(ModelAccess)
        return order.index(self) >= order.index(required)


class PlanType(StrEnum):
    PAID = "paid"
    INTERNAL = "internal"
    TRIAL = "trial"


# Charged millicredits per measured GPU-millisecond on the plan's own tier. One credit is one
# GPU-second on that tier, so every tier's rate is 1 mc/ms; the table exists so a future
# cross-tier rate is a data change, not a code change.
# The low-balance warning fires below 1/LOW_BALANCE_DIVISOR of the plan's monthly credits.
LOW_BALANCE_DIVISOR = 10

RATE_MC_PER_GPU_MS: dict[GpuTier, int] = {tier: 1 for tier in GpuTier}


@dataclass(frozen=True)
class Plan:
    slug: str
    type: PlanType
    usd_per_month: Decimal | None  # None: negotiated (enterprise)
    credits_per_month: int | None  # None: negotiated (enterprise)
    tier: GpuTier
    concurrent_jobs: int
    storage_gb: int
    model_access: ModelAccess
    third_party_api: bool
    lora_training: bool
    collaboration: bool
    node_editor: bool
    api_access: bool
    # Accepted-but-unfinished jobs a user may have waiting; keeps one user from flooding a tier.
    max_open_jobs: int
    # The largest input image a user may upload (POST /v1/uploads): the presigned POST's
    # content-length-range, checked again when the upload is completed.
    upload_bytes_max: int = 20 * 1024**2

    @property
    def credits_per_month_mc(self) -> int:
        if self.credits_per_month is None:
            raise ValueError(f"plan {self.slug} has negotiated credits; assign custom terms")
        return self.credits_per_month * MC_PER_CREDIT

    @property
    def low_balance_threshold_mc(self) -> int:
        """Below this, the user is warned once (LowBalanceReached): a tenth of a month."""
        if self.credits_per_month is None:
            return 0
        return self.credits_per_month_mc // LOW_BALANCE_DIVISOR

    @property
    def storage_bytes(self) -> int:
        return self.storage_gb * 1024**3

    def with_custom_terms(
        self,
        *,
        credits_per_month: int,
        tier: GpuTier,
        concurrent_jobs: int,
        storage_gb: int,
    ) -> Plan:
        """Enterprise terms set by an admin."""
        return replace(
            self,
            credits_per_month=credits_per_month,
            tier=tier,
            concurrent_jobs=concurrent_jobs,
            storage_gb=storage_gb,
            max_open_jobs=max(self.max_open_jobs, concurrent_jobs * 10),
        )


def _plan(
    slug: str,
    type_: PlanType,
    usd: str | None,
    credits: int | None,
    tier: GpuTier,
    concurrent: int,
    storage_gb: int,
    access: ModelAccess,
    *,
    third_party_api: bool,
    lora_training: bool = False,
    collaboration: bool = False,
    node_editor: bool = True,
    api_access: bool,
) -> Plan:
    return Plan(
        slug=slug,
        type=type_,
        usd_per_month=None if usd is None else Decimal(usd),
        credits_per_month=credits,
        tier=tier,
        concurrent_jobs=concurrent,
        storage_gb=storage_gb,
        model_access=access,
        third_party_api=third_party_api,
        lora_training=lora_training,
        collaboration=collaboration,
        node_editor=node_editor,
        api_access=api_access,
        max_open_jobs=concurrent * 10,
        # A trial uploads small images; paid plans take a full-size photo.
        upload_bytes_max=(5 if type_ is PlanType.TRIAL else 20) * 1024**2,
    )


B, HP, D = GpuTier.BASIC, GpuTier.HIGH_PERFORMANCE, GpuTier.DEDICATED
SD, FLUX, FULL = ModelAccess.SD_ONLY, ModelAccess.FLUX_INCLUDED, ModelAccess.FULL

PLANS: dict[str, Plan] = {
    p.slug: p
    for p in (
        _plan("starter", PlanType.PAID, "25", 5_000, B, 1, 20, SD,
              third_party_api=False, api_access=False),
        _plan("pro", PlanType.PAID, "75", 15_000, HP, 1, 100, FLUX,
              third_party_api=True, api_access=True),
        _plan("studio", PlanType.PAID, "150", 30_000, HP, 3, 200, FLUX,
              third_party_api=True, api_access=True),
        _plan("enterprise", PlanType.PAID, None, None, D, 1, 0, FULL,
              third_party_api=True, lora_training=True, collaboration=True, api_access=True),
        _plan("tester", PlanType.INTERNAL, "0", 50_000, B, 1, 20, FLUX,
              third_party_api=True, api_access=True),
        _plan("trial", PlanType.TRIAL, "0", 500, B, 1, 5, SD,
              third_party_api=False, api_access=False),
    )
}  # fmt: skip


def get_plan(slug: str) -> Plan:
    try:
        return PLANS[slug]
    except KeyError:
        raise ValueError(f"unknown plan {slug!r}; known plans: {', '.join(PLANS)}") from None


class FlagStatus(StrEnum):
    GATES = "gates"  # a feature this service offers: refused, with its problem type, without it
    NOT_OFFERED = "not_offered"  # the feature is not offered yet: the flag promises, gates nothing


@dataclass(frozen=True)
class PlanFlag:
    status: FlagStatus
    meaning: str  # what the flag gates, or what it will mean once offered (README, "Plan flags")


# Every boolean entitlement of ``Plan`` and what it means here, the one statement of it: GET
# /v1/plans and /v1/me show it beside each plan's values, the README's "Plan flags" table says
# the same, and tests/unit/test_plan_flags.py fails on a flag without an entry or a gating flag
# without a test of its refusal.
PLAN_FLAGS: dict[str, PlanFlag] = {
    "api_access": PlanFlag(
        FlagStatus.GATES,
        "API keys: creating one (POST /v1/api-keys) and signing in with one; refused as "
        "no-api-access",
    ),
    "lora_training": PlanFlag(
        FlagStatus.GATES,
        "LoRAs: uploading one (POST /v1/models/mine) and naming any in a job or quote (loras); "
        "refused as model-not-in-plan",
    ),
    "third_party_api": PlanFlag(
        FlagStatus.NOT_OFFERED,
        "jobs run on external image-model APIs, billed at the provider's reported cost times "
        "a markup (domain/providers.py); not offered yet: no provider is reachable from here",
    ),
    "collaboration": PlanFlag(
        FlagStatus.NOT_OFFERED,
        "shared boards (other users seeing or adding to a board); not offered yet: a board is "
        "its owner's alone",
    ),
    "node_editor": PlanFlag(
        FlagStatus.NOT_OFFERED,
        "InvokeAI's node editor (workflows as graphs of nodes); not offered yet: jobs run the "
        "fixed pipelines of POST /v1/jobs",
    ),
}

"""Response models read from the read models' rows (and domain objects) by attribute: the
public names where a row's differ, the credits strings computed, and a view read back from
its own JSON (the caches' path) the same view."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from api.schemas import BalanceView, JobView, PlanView, SubscriptionView, UsageView
from domain.parameters import JobParameters
from domain.plans import PLANS
from read_models import models as rm

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def lot(lot_id: str, remaining_mc: int, spendable: bool) -> rm.CreditLot:
    return rm.CreditLot(
        lot_id=lot_id, seq=1, source="trial", amount_mc=500_000, remaining_mc=remaining_mc,
        held_mc=0, consumed_mc=500_000 - remaining_mc, expired_mc=0, debited_mc=0,
        refunded_mc=0, valid_from=T0, valid_until=None, reference="r", expired=False,
        spendable=spendable,
    )  # fmt: skip


def test_a_balance_says_available_for_what_is_usable_now() -> None:
    row = rm.Balance(
        user_id="alice", available_mc=7_500, spendable_mc=2_500, held_mc=1_250,
        granted_mc=10_000, consumed_mc=2_500, refunded_mc=0, expired_mc=0, debited_mc=0,
        low_balance=False, position=42, lots=(lot("a", 2_500, True), lot("b", 5_000, False)),
        as_of=T0,
    )  # fmt: skip
    view = BalanceView.model_validate(row)
    body = view.model_dump(mode="json")
    assert (body["available_mc"], body["available_credits"]) == (2_500, "2.500")
    assert (body["unspent_mc"], body["unspent_credits"]) == (7_500, "7.500")
    assert (body["held_mc"], body["held_credits"]) == (1_250, "1.250")
    assert body["as_of"] == "2026-05-01T00:00:00Z"
    assert [(lt["lot_id"], lt["remaining_credits"]) for lt in body["lots"]] == [
        ("a", "2.500"),
        ("b", "5.000"),
    ]
    assert BalanceView.model_validate(body) == view  # the cached JSON reads back the same


def job_row(**parameters: object) -> rm.Job:
    params = JobParameters.model_validate(
        {"model": "tiny-sd", "prompt": "a pink sea", "steps": 4, "width": 64, "height": 64}
        | parameters
    )
    job_id = uuid.uuid4()
    image = rm.Image(
        name=f"{job_id}-0", job_id=job_id, index=0, key="k.png", thumbnail_key="k.webp",
        size_bytes=10, width=64, height=64, created_at=T0,
    )  # fmt: skip
    return rm.Job(
        job_id=job_id, status="completed", tier="basic", parameters=params, seed=123,
        hold_mc=5_500, budget_ms=5_500, estimate_ms=3_000, attempt=1, cancel_requested=False,
        gpu_ms=1_234, cuda_ms=1_200, charged_mc=1_234, refunded_mc=0, image_count=1,
        rejection_reason=None, rejection_detail=None, failure_reason=None, failure_fault=None,
        submitted_at=T0, accepted_at=T0, started_at=T0, finished_at=T0, updated_at=T0,
        images=(image,),
    )  # fmt: skip


def test_a_job_view_is_flat_with_the_seed_it_runs_with() -> None:
    row = job_row(scheduler="ddim", negative_prompt="fog", guidance_scale=5)
    view = JobView.model_validate(row)
    body = view.model_dump(mode="json")
    assert {k: body[k] for k in ("model", "prompt", "negative_prompt", "steps", "scheduler")} == {
        "model": "tiny-sd",
        "prompt": "a pink sea",
        "negative_prompt": "fog",
        "steps": 4,
        "scheduler": "ddim",
    }
    assert (body["seed"], body["guidance_scale"], body["batch_size"]) == (123, 5.0, 1)
    assert (body["hold_credits"], body["charged_credits"], body["refunded_credits"]) == (
        "5.500",
        "1.234",
        "0.000",
    )
    assert body["images"] == [
        {
            "name": f"{row.job_id}-0",
            "index": 0,
            "size_bytes": 10,
            "width": 64,
            "height": 64,
            # Signed only by GET /v1/jobs/{id} (api/job_views.py), fresh on each read.
            "url": None,
            "thumbnail_url": None,
            "urls_expire_at": None,
            "href": f"/v1/images/{row.job_id}-0",
        }
    ]
    assert body["queue"] is None  # set only for a queued job's own view
    assert "parameters" not in body
    assert JobView.model_validate(body) == view  # the job cache's JSON reads back the same


def test_a_plan_reads_the_same_from_the_domain_and_from_the_plan_table() -> None:
    for plan in PLANS.values():
        row = rm.Plan(
            slug=plan.slug, type=plan.type.value, usd_per_month=plan.usd_per_month,
            credits_per_month=plan.credits_per_month, tier=plan.tier.value,
            concurrent_jobs=plan.concurrent_jobs, storage_gb=plan.storage_gb,
            model_access=plan.model_access.value, third_party_api=plan.third_party_api,
            lora_training=plan.lora_training, collaboration=plan.collaboration,
            node_editor=plan.node_editor, api_access=plan.api_access,
            max_open_jobs=plan.max_open_jobs,
        )  # fmt: skip
        from_domain = PlanView.model_validate(plan).model_dump(mode="json")
        assert from_domain == PlanView.model_validate(row).model_dump(mode="json")
        assert from_domain["type"] == plan.type.value and from_domain["tier"] == plan.tier.value
        if plan.usd_per_month is None:
            assert from_domain["usd_per_month"] is None
        else:
            assert Decimal(from_domain["usd_per_month"]) == plan.usd_per_month
            assert from_domain["usd_per_month"].count(".") == 1
            assert len(from_domain["usd_per_month"].split(".")[1]) == 2
        mc = None if plan.credits_per_month is None else plan.credits_per_month * 1000
        assert from_domain["credits_per_month_mc"] == mc
        assert from_domain["models"]  # every plan runs at least the tiny model


def test_a_subscription_reads_the_same_from_its_row_and_its_aggregate() -> None:
    class Aggregate:  # the attribute names of domain.subscription.Subscription
        plan_slug = "pro"
        plan = PLANS["pro"]
        status = "active"
        period_start = T0
        period_end = T0
        cancel_at = None
        custom_terms = None

    row = rm.Subscription(
        plan="pro", status="active", period_start=T0, period_end=T0, cancel_at=None,
        external_id="sub_1", customer_id="cus_1", custom_terms=None,
    )  # fmt: skip
    assert SubscriptionView.model_validate(row) == SubscriptionView.model_validate(Aggregate())
    assert SubscriptionView.model_validate(row).plan == "pro"


def test_usage_says_from_and_to() -> None:
    bucket = rm.UsageBucket(key="2026-05-01", jobs=2, gpu_ms=3_000, charged_mc=3_000, refunded_mc=0)
    summary = rm.UsageSummary(
        group_by="day", start=T0, end=T0, buckets=(bucket,), jobs=2, gpu_ms=3_000,
        charged_mc=3_000, refunded_mc=0,
    )  # fmt: skip
    body = UsageView.model_validate(summary).model_dump(mode="json")
    assert body["from"] == body["to"] == "2026-05-01T00:00:00Z"
    assert body["charged_credits"] == body["buckets"][0]["charged_credits"] == "3.000"

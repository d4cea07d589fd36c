"""GenerationJob parameters and transitions, the plan table, the estimator and hold policy."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.catalog import MODELS, ModelFamily
from domain.errors import InvalidParameters, InvalidTransition, NotFound
from domain.estimation import budget_ms_for_hold, charge_for, estimate_gpu_ms, hold_for_estimate
from domain.jobs import GenerationJob, ImageRecord, JobParameters, seed_for
from domain.plans import PLANS, GpuTier, ModelAccess
from domain.subscription import Subscription
from domain.units import credits_to_mc, format_credits

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def params(**overrides: object) -> JobParameters:
    base: dict[str, object] = dict(model="sd-1.5", prompt="a cat", steps=30, width=512, height=512)
    base.update(overrides)
    return JobParameters(**base)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "dall-e"}, "model 'dall-e' is unknown; choose one of"),
        ({"prompt": "  "}, "prompt must not be empty"),
        ({"width": 500}, "width must be a multiple of 8 between 256 and 1024 for sd-1.5"),
        ({"height": 2048}, "height must be a multiple of 8 between 256 and 1024"),
        ({"model": "flux-dev", "width": 520}, "width must be a multiple of 16"),
    ],
)
def test_invalid_parameters_say_what_is_allowed(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidParameters, match=message.replace("(", r"\(")):
        params(**overrides).check()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt": "x" * 2001}, "at most 2000 characters"),
        ({"steps": 151}, "less than or equal to 150"),
        ({"batch_size": 9}, "less than or equal to 8"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"guidance_scale": 31.0}, "less than or equal to 30"),
        ({"scheduler": "magic"}, "Input should be 'ddim', "),
    ],
)
def test_parameters_outside_their_bounds_are_not_parameters(
    overrides: dict[str, object], message: str
) -> None:
    # The field rules of domain/parameters.py (the API's body too) hold at construction.
    with pytest.raises(ValidationError, match=message):
        params(**overrides)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ValidationError) as bounds:
        params(steps=0, batch_size=0)
    assert {e["loc"] for e in bounds.value.errors()} == {("steps",), ("batch_size",)}
    with pytest.raises(InvalidParameters) as e:
        params(prompt=" ", width=500).check()
    assert "prompt" in e.value.detail and "width" in e.value.detail


def test_fingerprint_distinguishes_requests_and_seed_is_stable() -> None:
    assert params().fingerprint() == params().fingerprint()
    assert params().fingerprint() != params(seed=1).fingerprint()
    job_id = uuid4()
    assert seed_for(job_id, None) == seed_for(job_id, None) <= 2**32 - 1
    assert seed_for(job_id, 42) == 42


def test_job_transitions_refuse_what_does_not_follow() -> None:
    job = GenerationJob.submit(
        user_id="u", idempotency_key="k", params=params(), tier="basic", at=T0
    )
    with pytest.raises(InvalidTransition):
        job.dispatch(attempt=1, worker_id="w", at=T0)  # not accepted yet
    job.accept(hold_mc=10, estimate_ms=5, budget_ms=10, at=T0)
    with pytest.raises(InvalidTransition):
        job.dispatch(attempt=2, worker_id="w", at=T0)  # attempts go one by one
    assert job.dispatch(attempt=1, worker_id="w", at=T0)
    assert job.dispatch(attempt=1, worker_id="w", at=T0) is False  # repeated report
    assert job.start(attempt=2, worker_id="w", gpu="T4", at=T0) is False  # not this attempt
    assert job.start(attempt=1, worker_id="w", gpu="T4", at=T0)
    job.complete(attempt=1, gpu_ms=5, cuda_ms=None, charged_mc=5, images=[], at=T0)
    with pytest.raises(InvalidTransition):
        job.cancel(gpu_ms=0, charged_mc=0, at=T0)


def test_delete_image_validates_then_records_one_event() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    job = GenerationJob.submit(
        user_id="u", idempotency_key="k", params=params(), tier="basic", at=at
    )
    job.accept(hold_mc=1000, estimate_ms=900, budget_ms=1000, at=at)
    job.dispatch(attempt=1, worker_id="w", at=at)
    job.start(attempt=1, worker_id="w", gpu="T4", at=at)
    image: ImageRecord = {"name": "img-0", "key": "a.png", "thumbnail_key": "a.webp",
                          "size_bytes": 9, "width": 64, "height": 64}  # fmt: skip
    job.complete(attempt=1, gpu_ms=10, cuda_ms=None, charged_mc=10, images=[image], at=at)
    job.collect_events()
    with pytest.raises(NotFound):
        job.delete_image(name="img-0", user_id="intruder", at=at)
    with pytest.raises(NotFound):
        job.delete_image(name="img-9", user_id="u", at=at)
    with pytest.raises(ValueError):
        job.delete_image(name="img-0", user_id="u", at=at.replace(tzinfo=None))
    assert job.collect_events() == []  # refused commands record nothing
    assert job.delete_image(name="img-0", user_id="u", at=at)
    assert job.delete_image(name="img-0", user_id="u", at=at) is False
    (deleted,) = job.collect_events()
    assert isinstance(deleted, GenerationJob.ImageDeleted)
    assert (deleted.name, deleted.key, deleted.thumbnail_key) == ("img-0", "a.png", "a.webp")
    assert job.deleted_images == {"img-0": at}


def test_plan_table_matches_the_operator_table() -> None:
    assert set(PLANS) == {"starter", "pro", "studio", "enterprise", "tester", "trial"}
    pro = PLANS["pro"]
    assert (pro.credits_per_month, pro.tier, pro.concurrent_jobs, pro.storage_gb) == (
        15_000,
        GpuTier.HIGH_PERFORMANCE,
        1,
        100,
    )
    assert PLANS["studio"].concurrent_jobs == 3 and PLANS["enterprise"].lora_training
    assert not PLANS["starter"].api_access and PLANS["tester"].credits_per_month == 50_000
    assert ModelAccess.FULL.allows(ModelAccess.FLUX_INCLUDED)
    assert not ModelAccess.SD_ONLY.allows(ModelAccess.FLUX_INCLUDED)
    assert MODELS["tiny-sd"].access is ModelAccess.SD_ONLY  # every plan may run it


def test_enterprise_needs_custom_terms() -> None:
    sub = Subscription.start_trial("u", T0)
    with pytest.raises(InvalidParameters, match="custom terms"):
        sub.change_plan(to_plan="enterprise", actor="admin", reason="deal", at=T0)
    sub.change_plan(
        to_plan="enterprise",
        actor="admin",
        reason="deal",
        at=T0,
        custom_terms={
            "credits_per_month": 200_000,
            "tier": "dedicated",
            "concurrent_jobs": 8,
            "storage_gb": 2000,
        },
    )
    plan = sub.plan
    assert (plan.credits_per_month, plan.tier, plan.concurrent_jobs) == (
        200_000,
        GpuTier.DEDICATED,
        8,
    )
    assert sub.status == "active"


@given(
    family=st.sampled_from(list(ModelFamily)),
    tier=st.sampled_from(list(GpuTier)),
    steps=st.integers(1, 150),
    side=st.integers(4, 128).map(lambda n: n * 16),
    batch=st.integers(1, 8),
)
def test_hold_covers_the_estimate_and_budget_matches_the_hold(
    family: ModelFamily, tier: GpuTier, steps: int, side: int, batch: int
) -> None:
    estimate = estimate_gpu_ms(family, tier, steps=steps, width=side, height=side, batch_size=batch)
    hold = hold_for_estimate(estimate, tier)
    assert hold >= estimate * 3 // 2 + 1000
    assert budget_ms_for_hold(hold, tier) * 1 == hold
    more = estimate_gpu_ms(family, tier, steps=steps + 1, width=side, height=side, batch_size=batch)
    assert more >= estimate  # never cheaper for more work (equal only through rounding)


@given(st.integers(0, 10**12))
def test_charge_is_exact_and_credits_format_round_trips(gpu_ms: int) -> None:
    assert charge_for(gpu_ms, GpuTier.BASIC) == gpu_ms
    assert credits_to_mc(format_credits(gpu_ms)) == gpu_ms

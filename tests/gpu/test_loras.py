"""LoRAs on the tiny pipeline: a LoRA built with peft changes the image and is removed after
the run (the next job's image is the clean base's, pixel for pixel); the worker reads a LoRA
only under the job's own user and only the verified bytes; a LoRA job through the whole
platform is billed exactly like any run, its LoRA loading not billed."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from api.model_check import inspect_lora
from domain.catalog import ModelFamily
from domain.jobs import JobParameters
from domain.subscription import CustomTerms
from gpu_consumer.inputs import InputMissing
from gpu_consumer.loras import LoraStore
from gpu_consumer.registry import LoadedPipeline, ModelRegistry
from gpu_consumer.run import InvalidJob, RunResult, run_dispatch
from gpu_consumer.tiny_lora import build_tiny_lora
from infra.kafka import ensure_topics
from infra.messages import Dispatch, Outcome
from infra.settings import Settings
from tests.e2e.test_generation_flow import Platform, finished_reports, platform, stack
from tests.gpu.conftest import make_dispatch
from tests.gpu.test_tiny_pipeline import FakeChannel
from tests.gpu.test_worker import finished, new_worker, reports_until, running, send, started

CPU = torch.device("cpu")
__all__ = ["platform", "stack"]  # the e2e fixtures, used here too


@pytest.fixture(scope="module")
def lora_bytes(tiny: LoadedPipeline, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = build_tiny_lora(tiny.pipeline, tmp_path_factory.mktemp("lora") / "pink.safetensors")
    return path.read_bytes()


def _put(settings: Settings, s3: Any, user: str, data: bytes) -> tuple[str, str]:
    """The LoRA stored as the user's model; its id and sha256."""
    model_id = str(uuid.uuid4())
    key = f"models/users/{user}/{model_id}.safetensors"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=data)
    return model_id, hashlib.sha256(data).hexdigest()


def _lora_dispatch(user: str, model_id: str, sha: str, weight: float = 1.0, **kw: Any) -> Dispatch:
    return make_dispatch(
        user_id=user, loras=[{"id": model_id, "weight": weight, "sha256": sha}], **kw
    )


def _pixels(result: RunResult) -> np.ndarray:
    assert result.outcome is Outcome.COMPLETED, result.failure
    return np.stack([np.asarray(image) for image in result.images])


def test_the_tiny_lora_is_a_verifiable_sd15_lora(lora_bytes: bytes) -> None:
    facts = inspect_lora(io.BytesIO(lora_bytes), len(lora_bytes))
    assert facts.problem is None and facts.sha256 == hashlib.sha256(lora_bytes).hexdigest()
    assert facts.tensor_names and all(n.startswith("unet.") for n in facts.tensor_names)
    from domain.user_models import lora_problem

    assert lora_problem(ModelFamily.SD15, facts.tensor_names) is None


def test_a_lora_changes_the_image_and_the_next_job_runs_on_the_clean_base(
    settings: Settings, s3_client: Any, tiny: LoadedPipeline, lora_bytes: bytes
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    model_id, sha = _put(settings, s3_client, user, lora_bytes)
    store = LoraStore(s3_client, settings.s3_bucket)
    plain = make_dispatch(user_id=user, seed=7)
    base = _pixels(run_dispatch(tiny, plain, CPU, FakeChannel()))

    with_lora = _lora_dispatch(user, model_id, sha, seed=7)
    assert store.apply(tiny, with_lora) >= 0
    changed = _pixels(run_dispatch(tiny, with_lora, CPU, FakeChannel()))
    assert store.remove(tiny)
    after = _pixels(run_dispatch(tiny, plain, CPU, FakeChannel()))

    assert not np.array_equal(changed, base)  # the LoRA changes what the model makes
    assert np.array_equal(after, base)  # and is gone: the base model exactly, same seed
    # Its weight scales it: at weight 0 the adapter is there and changes nothing.
    store.apply(tiny, _lora_dispatch(user, model_id, sha, weight=0.0, seed=7))
    try:
        unweighted = _pixels(run_dispatch(tiny, plain, CPU, FakeChannel()))
    finally:
        assert store.remove(tiny)
    assert np.allclose(unweighted, base, atol=1)


def test_a_lora_is_read_only_under_the_jobs_user_and_only_as_verified(
    settings: Settings, s3_client: Any, tiny: LoadedPipeline, lora_bytes: bytes
) -> None:
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    model_id, sha = _put(settings, s3_client, ann, lora_bytes)
    store = LoraStore(s3_client, settings.s3_bucket)
    store.apply(tiny, _lora_dispatch(ann, model_id, sha))  # ann's own: applied (and cached)
    assert store.remove(tiny)
    # A dispatch for bob naming ann's model and digest: the key is built from the job's user,
    # so ann's file (even cached on this worker) is never loaded for bob.
    with pytest.raises(InputMissing, match="not one of this user's models"):
        store.apply(tiny, _lora_dispatch(bob, model_id, sha))
    # bob's file replaced after verification (the presigned POST was still valid): refused.
    bobs_id, bobs_sha = _put(settings, s3_client, bob, lora_bytes)
    s3_client.put_object(
        Bucket=settings.s3_bucket,
        Key=f"models/users/{bob}/{bobs_id}.safetensors",
        Body=lora_bytes + b" ",
    )
    with pytest.raises(InputMissing, match="not the file that was verified"):
        store.apply(tiny, _lora_dispatch(bob, bobs_id, bobs_sha))
    with pytest.raises(InvalidJob, match="no sha256"):
        store.apply(tiny, make_dispatch(user_id=ann, loras=[{"id": model_id}]))
    base = run_dispatch(tiny, make_dispatch(seed=3), CPU, FakeChannel())
    assert base.outcome is Outcome.COMPLETED  # nothing was left applied by the refusals
    assert not hasattr(tiny.pipeline.unet, "peft_config") or not tiny.pipeline.unet.peft_config


async def test_worker_applies_a_lora_for_its_job_only_and_refuses_a_forged_dispatch(
    settings: Settings,
    registry: ModelRegistry,
    models_cache: Path,
    s3_client: Any,
    lora_bytes: bytes,
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    model_id, sha = _put(settings, s3_client, ann, lora_bytes)
    common: dict[str, Any] = {"worker_id": worker_id, "seed": 11}
    before = make_dispatch(user_id=ann, **common)
    lora = _lora_dispatch(ann, model_id, sha, **common)
    after = make_dispatch(user_id=ann, **common)
    forged = _lora_dispatch(bob, model_id, sha, **common)
    jobs = (before, lora, after, forged)
    worker = new_worker(settings, registry, models_cache, worker_id)
    async with running(worker):
        await send(settings, *jobs)
        reports = await reports_until(
            settings, lambda rs: all(finished(rs, d.job_id) for d in jobs), timeout=120
        )
    done = {d.job_id: finished(reports, d.job_id)[0] for d in jobs}
    for d in (before, lora, after):
        assert done[d.job_id].outcome is Outcome.COMPLETED, done[d.job_id].error
        assert done[d.job_id].gpu_ms > 0
    [started_lora] = started(reports, lora.job_id)
    assert started_lora.model_load_ms == done[lora.job_id].model_load_ms  # LoRA time: loading

    def image(d: Dispatch) -> bytes:
        key = done[d.job_id].images[0].key
        body: bytes = s3_client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        return body

    assert image(lora) != image(before) and image(after) == image(before)
    refused = done[forged.job_id]
    assert refused.outcome is Outcome.FAILED and (refused.fault, refused.retryable) == (
        "user", False,
    )  # fmt: skip
    assert refused.gpu_ms == 0 and "not one of this user's models" in (refused.error or "")
    assert not started(reports, forged.job_id)  # nothing ran, nothing billed


@pytest.mark.integration
async def test_lora_job_end_to_end_is_billed_exactly(platform: Platform, lora_bytes: bytes) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    now = datetime.now(UTC)
    user = f"lia-{uuid.uuid4().hex[:6]}"
    app.register_user(user, now)
    terms = CustomTerms(credits_per_month=5_000, tier="basic", concurrent_jobs=1, storage_gb=1)
    app.change_plan(
        user, to_plan="enterprise", actor="admin:t", reason="t", at=now, custom_terms=terms
    )
    ticket = app.request_user_model(
        user, request_key="pink", name="pink", family=ModelFamily.SD15, at=now
    )
    from gpu_consumer.outputs import s3_client

    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=ticket.key, Body=lora_bytes)
    facts = inspect_lora(io.BytesIO(lora_bytes), ticket.size_bytes_max)
    app.complete_user_model(user, ticket.model_id, facts=facts, at=now)
    params = JobParameters(
        model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64,
        loras=[{"id": ticket.model_id, "weight": 0.8}],
    )  # fmt: skip
    params = app.pin_job_loras(user, params)
    before = app.account(user).available_mc(datetime.now(UTC))
    job = app.submit_job(user, idempotency_key="lora", params=params, at=datetime.now(UTC))
    assert job.status == "accepted" and job.job_id is not None, job
    await platform.until_terminal(job.job_id)

    done = app.job(job.job_id)
    assert done.status == "completed" and done.gpu_ms > 0
    assert done.parameters["loras"] == [
        {"id": str(ticket.model_id), "weight": 0.8, "sha256": facts.sha256}
    ]
    [report] = [r for r in await finished_reports(settings) if r.job_id == job.job_id]
    assert report.gpu_ms == done.gpu_ms and done.charged_mc == min(report.gpu_ms, job.budget_ms)
    [image] = done.images
    assert image["key"] == f"users/{user}/images/{job.job_id}-0.png"
    s3_client(settings).head_object(Bucket=settings.s3_bucket, Key=image["key"])  # in S3
    account = app.account(user)
    assert account.held_mc == 0
    assert account.available_mc(datetime.now(UTC)) == before - done.charged_mc  # exactly once

"""Upscaling on the tiny RRDBNet (random weights, built locally): N x N in, (N x scale)^2 out;
the worker reads the input from S3 at the output / scale and meters the pass like any run;
an upscale job through the whole platform is billed exactly by its measured GPU time."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from PIL import Image

from domain.uploads import ImageFacts
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.upscalers import RRDBNet, Upscaler, run_upscale
from infra.kafka import ensure_topics
from infra.messages import Outcome
from infra.settings import Settings
from tests.e2e.test_generation_flow import Platform, finished_reports, platform, stack
from tests.gpu.conftest import make_dispatch
from tests.gpu.test_worker import finished, new_worker, reports_until, running, send

CPU = torch.device("cpu")
__all__ = ["platform", "stack"]  # the e2e fixtures, used here too
UPSCALE = {"model": "tiny-upscaler-x4", "steps": 1, "scale": 4}


def _png(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def test_tiny_upscaler_makes_n_times_scale_squared(registry: ModelRegistry) -> None:
    model = registry.load("tiny-upscaler-x4", CPU)
    assert model.upscale == 4 and isinstance(model.pipeline, Upscaler)
    for n in (8, 24):
        dispatch = make_dispatch(**UPSCALE, init_image=str(uuid.uuid4()), width=4 * n, height=4 * n)
        image = Image.new("RGB", (n, n), (10, 200, 30))
        outcome, gpu_ms, _, images, problem = run_upscale(
            model.pipeline, dispatch, CPU, False, image
        )
        assert (outcome, problem) == (Outcome.COMPLETED, None)
        assert [i.size for i in images] == [(4 * n, 4 * n)] and gpu_ms >= 0
    # A x2 network unshuffles its input first and ends in the same x4 head.
    net = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    assert net(torch.zeros(1, 3, 10, 6)).shape == (1, 3, 20, 12)


def test_a_cancelled_or_inputless_upscale_runs_nothing(registry: ModelRegistry) -> None:
    model = registry.load("tiny-upscaler-x4", CPU)
    dispatch = make_dispatch(**UPSCALE, init_image=str(uuid.uuid4()))
    image = Image.new("RGB", (16, 16))
    assert run_upscale(model.pipeline, dispatch, CPU, True, image)[:2] == (Outcome.CANCELLED, 0)
    outcome, gpu_ms, _, _, problem = run_upscale(model.pipeline, dispatch, CPU, False, None)
    assert (outcome, gpu_ms) == (Outcome.FAILED, 0) and problem is not None


async def test_worker_upscales_from_s3_billed_by_measured_time(
    settings: Settings, registry: ModelRegistry, models_cache: Any, s3_client: Any
) -> None:
    await ensure_topics(settings)
    worker_id, user, upload = f"w-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    # A 40 px upload: the worker reads it at 64 / 4 = 16 px, before the meter.
    s3_client.put_object(
        Bucket=settings.s3_bucket, Key=f"users/{user}/uploads/{upload}.png", Body=_png(40)
    )
    job = make_dispatch(
        **UPSCALE, worker_id=worker_id, user_id=user, init_image=str(upload), width=64, height=64
    )
    worker = new_worker(settings, registry, models_cache, worker_id)
    async with running(worker):
        await send(settings, job)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, job.job_id)))
    [done] = finished(reports, job.job_id)
    assert done.outcome is Outcome.COMPLETED and done.gpu_ms >= 0, done.error
    [image] = done.images
    assert image.key == f"users/{user}/images/{job.job_id}-0.png"
    stored = s3_client.get_object(Bucket=settings.s3_bucket, Key=image.key)["Body"].read()
    assert Image.open(io.BytesIO(stored)).size == (64, 64)
    record = next(r for r in worker.history if r.key == job.key)
    # The billed figure is the meter's, the input read is counted apart (not billed).
    assert record.gpu_ms == done.gpu_ms and record.input_ms >= 0


@pytest.mark.integration
async def test_upscale_job_end_to_end_is_billed_exactly(platform: Platform) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    now = datetime.now(UTC)
    app.register_user("uma", now)
    ticket = app.request_upload("uma", request_key="small", content_type="image/png", at=now)
    from gpu_consumer.outputs import s3_client

    body = _png(32)
    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=ticket.key, Body=body)
    facts = ImageFacts(size_bytes=len(body), format="PNG", width=32, height=32)
    app.complete_upload("uma", ticket.upload_id, facts=facts, at=now)
    from domain.jobs import JobParameters

    params = JobParameters(
        model="tiny-upscaler-x4", prompt="sharper", steps=1, width=128, height=128,
        init_image=str(ticket.upload_id), scale=4,
    )  # fmt: skip
    params.check()
    app.checked_job_inputs("uma", params)
    before = app.account("uma").available_mc(datetime.now(UTC))
    job = app.submit_job("uma", idempotency_key="upscale", params=params, at=datetime.now(UTC))
    assert job.status == "accepted" and job.job_id is not None
    await platform.until_terminal(job.job_id)

    done = app.job(job.job_id)
    assert done.status == "completed", done
    assert done.parameters["scale"] == 4
    [report] = [r for r in await finished_reports(settings) if r.job_id == job.job_id]
    assert report.gpu_ms == done.gpu_ms and done.charged_mc == min(report.gpu_ms, job.budget_ms)
    assert [(i.width, i.height) for i in report.images] == [(128, 128)]
    account = app.account("uma")
    assert account.held_mc == 0
    assert account.available_mc(datetime.now(UTC)) == before - done.charged_mc  # exactly once

"""Image-to-image and inpainting on the tiny pipelines: the runs themselves (strength cuts the
steps), the worker reading its inputs from S3 under the job's own user only, and an img2img
job through the whole platform, billed exactly."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from PIL import Image

from domain.uploads import ImageFacts
from gpu_consumer.inputs import InputMissing, RunInputs, read_inputs
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.run import run_dispatch
from infra.kafka import ensure_topics
from infra.messages import Outcome
from infra.settings import Settings
from tests.e2e.test_generation_flow import Platform, finished_reports, platform, stack
from tests.gpu.conftest import make_dispatch
from tests.gpu.test_tiny_pipeline import FakeChannel
from tests.gpu.test_worker import finished, new_worker, reports_until, running, send, started

CPU = torch.device("cpu")
__all__ = ["platform", "stack"]  # the e2e fixtures, used here too


def _png(mode: str = "RGB", size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128 if mode == "L" else (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _inputs(mask: bool = False) -> RunInputs:
    image = Image.new("RGB", (64, 64), (200, 40, 90))
    return RunInputs(image, Image.new("L", (64, 64), 255) if mask else None)


def test_img2img_runs_int_steps_times_strength_steps(registry: ModelRegistry, tiny: Any) -> None:
    ref = str(uuid.uuid4())
    runs = {}
    for strength in (1.0, 0.5):
        dispatch = make_dispatch(steps=8, init_image=ref, strength=strength, scheduler="ddim")
        channel = FakeChannel()
        result = run_dispatch(tiny, dispatch, CPU, channel, inputs=_inputs())
        assert result.outcome is Outcome.COMPLETED, result.failure
        assert [(i.width, i.height) for i in result.images] == [(64, 64)]
        runs[strength] = (result.steps_done, channel.steps[-1])
    # DDIM takes exactly the steps asked: img2img runs int(8 x 0.5) = 4 of them.
    assert runs[1.0] == (8, (8, 8)) and runs[0.5] == (4, (4, 4))
    # Text-to-image on the same loaded pipeline is untouched by the img2img view of it.
    plain = run_dispatch(tiny, make_dispatch(steps=8, scheduler="ddim"), CPU, FakeChannel())
    assert plain.outcome is Outcome.COMPLETED and plain.steps_done == 8


def test_inpainting_runs_on_the_nine_channel_unet(registry: ModelRegistry) -> None:
    model = registry.load("tiny-sd-inpaint", CPU)
    assert model.inpainting and model.pipeline.unet.config.in_channels == 9
    ref = str(uuid.uuid4())
    dispatch = make_dispatch(model="tiny-sd-inpaint", init_image=ref, mask=ref, steps=4)
    result = run_dispatch(model, dispatch, CPU, FakeChannel(), inputs=_inputs(mask=True))
    assert result.outcome is Outcome.COMPLETED, result.failure
    assert [(i.width, i.height) for i in result.images] == [(64, 64)] and result.gpu_ms > 0
    # Without its inputs the inpainting model refuses the job as the user's error.
    bare = run_dispatch(model, make_dispatch(model="tiny-sd-inpaint"), CPU, FakeChannel())
    assert bare.outcome is Outcome.FAILED and bare.failure is not None
    assert bare.failure.fault == "user" and not bare.failure.retryable


def test_inputs_are_read_only_under_the_jobs_own_user(settings: Settings, s3_client: Any) -> None:
    ann, bob, upload = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    key = f"users/{ann}/uploads/{upload}.png"
    s3_client.put_object(Bucket=settings.s3_bucket, Key=key, Body=_png(size=100))
    mine = make_dispatch(user_id=ann, init_image=str(upload), mask=str(upload), width=48, height=48)
    inputs = read_inputs(s3_client, settings.s3_bucket, mine)
    assert inputs.image is not None and inputs.image.size == (48, 48) and inputs.image.mode == "RGB"
    assert inputs.mask is not None and inputs.mask.mode == "L"
    theirs = make_dispatch(user_id=bob, init_image=str(upload))
    with pytest.raises(InputMissing):
        read_inputs(s3_client, settings.s3_bucket, theirs)


async def test_worker_runs_img2img_from_s3_and_fails_a_missing_input_as_the_users(
    settings: Settings, registry: ModelRegistry, models_cache: Any, s3_client: Any
) -> None:
    await ensure_topics(settings)
    worker_id, user, upload = f"w-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    s3_client.put_object(
        Bucket=settings.s3_bucket, Key=f"users/{user}/uploads/{upload}.png", Body=_png()
    )
    good = make_dispatch(worker_id=worker_id, user_id=user, init_image=str(upload), strength=0.5)
    gone = make_dispatch(worker_id=worker_id, user_id=user, init_image=str(uuid.uuid4()))
    worker = new_worker(settings, registry, models_cache, worker_id)
    async with running(worker):
        await send(settings, good, gone)
        reports = await reports_until(
            settings, lambda rs: bool(finished(rs, good.job_id) and finished(rs, gone.job_id))
        )
    [done] = finished(reports, good.job_id)
    assert done.outcome is Outcome.COMPLETED and done.gpu_ms > 0, done.error
    assert done.images[0].key == f"users/{user}/images/{good.job_id}-0.png"
    [failed] = finished(reports, gone.job_id)
    assert failed.outcome is Outcome.FAILED and (failed.fault, failed.retryable) == ("user", False)
    assert failed.gpu_ms == 0 and not started(reports, gone.job_id)  # nothing loaded or billed
    record = next(r for r in worker.history if r.key == good.key)
    assert record.input_ms >= 0 and record.gpu_ms == done.gpu_ms


@pytest.mark.integration
async def test_img2img_job_end_to_end_is_billed_exactly(platform: Platform) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    now = datetime.now(UTC)
    app.register_user("ivy", now)
    ticket = app.request_upload("ivy", request_key="photo", content_type="image/png", at=now)
    from gpu_consumer.outputs import s3_client

    body = _png()
    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=ticket.key, Body=body)
    facts = ImageFacts(size_bytes=len(body), format="PNG", width=64, height=64)
    app.complete_upload("ivy", ticket.upload_id, facts=facts, at=now)
    from domain.jobs import JobParameters

    params = JobParameters(
        model="tiny-sd", prompt="the same sea, at night", steps=4, width=64, height=64,
        init_image=str(ticket.upload_id), strength=0.5,
    )  # fmt: skip
    app.checked_job_inputs("ivy", params)
    before = app.account("ivy").available_mc(datetime.now(UTC))
    job = app.submit_job("ivy", idempotency_key="img2img", params=params, at=datetime.now(UTC))
    assert job.status == "accepted" and job.job_id is not None
    await platform.until_terminal(job.job_id)

    done = app.job(job.job_id)
    assert done.status == "completed" and done.gpu_ms > 0
    assert done.parameters["init_image"] == str(ticket.upload_id)
    [report] = [r for r in await finished_reports(settings) if r.job_id == job.job_id]
    assert report.gpu_ms == done.gpu_ms and done.charged_mc == min(report.gpu_ms, job.budget_ms)
    account = app.account("ivy")
    assert account.held_mc == 0
    assert account.available_mc(datetime.now(UTC)) == before - done.charged_mc  # exactly once

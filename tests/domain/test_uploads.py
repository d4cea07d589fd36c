"""Uploads and the image inputs of a job, on the in-memory event store: the verdict's rules,
tenant isolation, the ownership check of init images and masks, and what strength does to the
steps, the estimate and the hold."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.application import PinkseaApplication
from domain.calibration import calibration_for, inputs_ms
from domain.commands.admission import estimate_for
from domain.errors import IdempotencyConflict, InvalidParameters, NotFound
from domain.estimation import hold_for_estimate
from domain.job_events import ImageCategory
from domain.jobs import ImageRecord, JobParameters
from domain.plans import GpuTier
from domain.uploads import SIDE_PX_MAX, ImageFacts, Upload, UploadPurpose, UploadStatus

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
PNG = ImageFacts(size_bytes=1000, format="PNG", width=64, height=64)


@pytest.fixture
def app() -> PinkseaApplication:
    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def _user(app: PinkseaApplication) -> str:
    user = f"user-{uuid4()}"
    app.register_user(user, T0)
    return user


def _upload(app: PinkseaApplication, user: str, facts: ImageFacts = PNG, key: str = "k") -> UUID:
    ticket = app.request_upload(user, request_key=key, content_type="image/png", at=T0)
    app.complete_upload(user, ticket.upload_id, facts=facts, at=T0)
    return ticket.upload_id


def test_request_is_idempotent_and_keyed_under_the_user(app: PinkseaApplication) -> None:
    user = _user(app)
    first = app.request_upload(user, request_key="k", content_type="image/webp", at=T0)
    again = app.request_upload(user, request_key="k", content_type="image/webp", at=T0)
    assert first.changed and not again.changed and again.upload_id == first.upload_id
    assert first.key == f"users/{user}/uploads/{first.upload_id}.webp"
    assert first.size_bytes_max == 5 * 1024**2  # the trial plan's limit
    assert again.position == first.position
    with pytest.raises(IdempotencyConflict):
        app.request_upload(user, request_key="k", content_type="image/png", at=T0)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (ImageFacts(size_bytes=10, problem="it is not a PNG, JPEG or WebP image"), "not a PNG"),
        (ImageFacts(size_bytes=1000, format="JPEG", width=64, height=64), "is JPEG, not image/png"),
        (ImageFacts(size_bytes=5 * 1024**2 + 1, format="PNG", width=64, height=64), "bytes"),
        (ImageFacts(size_bytes=100, format="PNG", width=4, height=64), "width is 4 px"),
        (ImageFacts(size_bytes=100, format="PNG", width=64, height=SIDE_PX_MAX + 1), "height"),
    ],
)
def test_a_bad_object_is_rejected_with_its_reason(
    app: PinkseaApplication, facts: ImageFacts, reason: str
) -> None:
    user = _user(app)
    upload = app.upload(user, _upload(app, user, facts))
    assert upload.status == UploadStatus.REJECTED.value and reason in (upload.rejection or "")
    assert not upload.usable
    # The verdict stands: completing again records nothing.
    again = app.complete_upload(user, upload.id, facts=PNG, at=T0)
    assert not again.changed and again.status == UploadStatus.REJECTED.value


def test_another_users_upload_is_not_found_and_a_deleted_one_is_gone(
    app: PinkseaApplication,
) -> None:
    ann, bob = _user(app), _user(app)
    upload_id = _upload(app, ann)
    assert app.upload(ann, upload_id).usable
    for command in (
        lambda: app.upload(bob, upload_id),
        lambda: app.complete_upload(bob, upload_id, facts=PNG, at=T0),
        lambda: app.delete_upload(bob, upload_id, at=T0),
    ):
        with pytest.raises(NotFound):
            command()
    app.delete_upload(ann, upload_id, at=T0)
    with pytest.raises(NotFound):
        app.delete_upload(ann, upload_id, at=T0)
    with pytest.raises(NotFound):
        app.upload(ann, upload_id)


def _finished_job(app: PinkseaApplication, user: str) -> str:
    params = JobParameters(model="tiny-sd", prompt="a sea", steps=4, width=64, height=64)
    job_id = app.submit_job(user, idempotency_key="j", params=params, at=T0).job_id
    assert job_id is not None
    name = f"{job_id}-0"
    image: ImageRecord = {
        "name": name,
        "key": f"users/{user}/images/{name}.png",
        "thumbnail_key": f"users/{user}/thumbnails/{name}.webp",
        "size_bytes": 10,
        "width": 64,
        "height": 64,
    }
    app.record_dispatch(job_id, attempt=1, worker_id="w", at=T0)
    app.record_start(job_id, attempt=1, worker_id="w", gpu="cpu", at=T0)
    app.complete_job(job_id, attempt=1, gpu_ms=5, cuda_ms=None, images=[image], at=T0)
    return name


def test_a_job_may_name_only_the_users_own_usable_images(app: PinkseaApplication) -> None:
    ann, bob = _user(app), _user(app)
    upload_id, mask_id = str(_upload(app, ann)), str(_upload(app, ann, key="m"))
    image = _finished_job(app, ann)

    def job(**inputs: str) -> JobParameters:
        model = "tiny-sd-inpaint" if "mask" in inputs else "tiny-sd"
        return JobParameters(model=model, prompt="p", steps=4, width=64, height=64, **inputs)

    jobs = (job(init_image=upload_id), job(init_image=image), job(init_image=image, mask=mask_id))
    for params in jobs:
        app.checked_job_inputs(ann, params)
        with pytest.raises(NotFound):
            app.checked_job_inputs(bob, params)
    with pytest.raises(NotFound):  # no such upload, no such image
        app.checked_job_inputs(ann, job(init_image=str(uuid4())))
    with pytest.raises(NotFound):
        app.checked_job_inputs(ann, job(init_image=f"{uuid4()}-0"))
    pending = app.request_upload(ann, request_key="p", content_type="image/png", at=T0)
    with pytest.raises(InvalidParameters, match="pending"):
        app.checked_job_inputs(ann, job(init_image=str(pending.upload_id)))


def test_image_input_rules_are_checked_with_the_parameters() -> None:
    base: dict[str, Any] = {"prompt": "p", "steps": 4, "width": 64, "height": 64}
    some = str(uuid4())
    for bad, message in (
        ({"model": "tiny-sd", "strength": 0.5}, "need an init_image"),
        ({"model": "tiny-sd", "init_image": some, "mask": some}, "needs an inpainting model"),
        ({"model": "tiny-sd-inpaint", "init_image": some}, "send init_image and mask"),
        ({"model": "tiny-sd-inpaint", "init_image": some, "mask": f"{some}-0"}, "uploads"),
        ({"model": "tiny-sd", "init_image": some, "strength": 0.2}, "is 0"),
    ):
        with pytest.raises(InvalidParameters, match=message):
            JobParameters(**base, **bad).check()
    # Unset inputs are not stored: a text-to-image job's parameters are as they always were.
    plain = JobParameters(model="tiny-sd", **base)
    assert "init_image" not in plain.as_event_data() and "strength" not in plain.as_event_data()


@given(steps=st.integers(1, 150), strength=st.floats(0.01, 1.0))
def test_effective_steps_follow_diffusers_rule(steps: int, strength: float) -> None:
    params = JobParameters(
        model="tiny-sd", prompt="p", steps=steps, width=64, height=64,
        init_image=str(UUID(int=7)), strength=strength,
    )  # fmt: skip
    # StableDiffusionImg2ImgPipeline.get_timesteps: min(int(steps * strength), steps).
    assert params.effective_steps == min(int(steps * strength), steps)
    assert 0 <= params.effective_steps <= steps


def test_the_hold_for_strength_half_is_about_half_of_full_strength() -> None:
    def hold(strength: float) -> int:
        params = JobParameters(
            model="sd-1.5", prompt="p", steps=40, width=512, height=512,
            init_image=str(UUID(int=7)), strength=strength,
        )  # fmt: skip
        return hold_for_estimate(estimate_for(params, GpuTier.BASIC), GpuTier.BASIC)

    full, half = hold(1.0), hold(0.5)
    steps_only = estimate_for(
        JobParameters(model="sd-1.5", prompt="p", steps=20, width=512, height=512),
        GpuTier.BASIC,
    )
    # 20 of the 40 steps run, after the init image's VAE encode (domain/estimation.py).
    encode = inputs_ms(
        calibration_for("sd-1.5", GpuTier.BASIC),
        steps=20, width=512, height=512, batch_size=1, loras=0, vae_encodes=1,
    )  # fmt: skip
    assert half == hold_for_estimate(steps_only + encode, GpuTier.BASIC)
    assert 0.45 < half / full < 0.6  # the fixed overhead and the margin stay


# ------------------------------------------------------------- an upload is an image


def _events(app: PinkseaApplication, upload_id: UUID) -> list[str]:
    return [type(e).__qualname__ for e in app.events.get(upload_id)]


def test_an_uploads_flags_follow_the_rule_of_a_jobs_images(app: PinkseaApplication) -> None:
    user = _user(app)
    upload_id = _upload(app, user)
    flags: list[dict[str, Any]] = [
        {"starred": True},
        {"starred": True},  # as it is: nothing recorded
        {"starred": True, "is_intermediate": True},
        {},
        {"starred": False, "is_intermediate": False},
    ]
    changes = [app.flag_upload(user, upload_id, **f, at=T0).changed for f in flags]
    assert changes == [True, False, True, False, True]
    assert _events(app, upload_id)[-4:] == [
        "Upload.Starred",
        "Upload.MarkedIntermediate",
        "Upload.Unstarred",
        "Upload.UnmarkedIntermediate",
    ]
    upload = app.upload(user, upload_id)
    assert (upload.starred, upload.is_intermediate) == (False, False)


def test_only_the_owner_flags_a_completed_upload(app: PinkseaApplication) -> None:
    ann, bob = _user(app), _user(app)
    done = _upload(app, ann)
    pending = app.request_upload(ann, request_key="p", content_type="image/png", at=T0).upload_id
    rejected = _upload(app, ann, ImageFacts(size_bytes=5, problem="not an image"), key="r")
    deleted = _upload(app, ann, key="d")
    app.delete_upload(ann, deleted, at=T0)
    for user, upload_id in ((bob, done), (ann, pending), (ann, rejected), (ann, deleted)):
        before = _events(app, upload_id)
        with pytest.raises(NotFound):
            app.flag_upload(user, upload_id, starred=True, at=T0)
        assert _events(app, upload_id) == before  # nothing recorded


def test_an_upload_is_filed_on_one_board_of_its_owner_and_leaves_it_deleted(
    app: PinkseaApplication,
) -> None:
    ann, bob = _user(app), _user(app)
    upload_id = _upload(app, ann)
    name = str(upload_id)
    seas = app.create_board(ann, request_key="s", name="Seas", at=T0).board_id
    skies = app.create_board(ann, request_key="k", name="Skies", at=T0).board_id
    theirs = app.create_board(bob, request_key="b", name="Theirs", at=T0).board_id

    assert app.add_board_image(ann, seas, image_name=name, at=T0).changed
    assert not app.add_board_image(ann, seas, image_name=name, at=T0).changed
    assert app.add_board_image(ann, skies, image_name=name, at=T0).changed  # it moves
    assert not app.board(ann, seas).holds(name) and app.board(ann, skies).holds(name)
    assert app.upload(ann, upload_id).board_id == str(skies)
    assert _events(app, upload_id).count("Upload.Filed") == 2
    for user, board in ((bob, theirs), (ann, theirs), (bob, skies)):
        with pytest.raises(NotFound):  # another user's upload, or board
            app.add_board_image(user, board, image_name=name, at=T0)
    pending = app.request_upload(ann, request_key="p", content_type="image/png", at=T0)
    with pytest.raises(NotFound):  # not an image (yet)
        app.add_board_image(ann, seas, image_name=str(pending.upload_id), at=T0)

    app.delete_upload(ann, upload_id, at=T0)
    assert not app.board(ann, skies).holds(name)  # a deleted image is on no board
    with pytest.raises(NotFound):
        app.add_board_image(ann, seas, image_name=name, at=T0)
    # Taken off before its deletion, it leaves no board behind either.
    kept = _upload(app, ann, key="kept")
    app.add_board_image(ann, seas, image_name=str(kept), at=T0)
    app.remove_board_image(ann, seas, image_name=str(kept), at=T0)
    app.delete_upload(ann, kept, at=T0)
    assert app.board(ann, seas).images == []


def test_an_uploads_purpose_is_its_gallery_category(app: PinkseaApplication) -> None:
    user = _user(app)
    mask = app.request_upload(
        user, request_key="m", content_type="image/png", at=T0, purpose=UploadPurpose.MASK
    )
    again = app.request_upload(
        user, request_key="m", content_type="image/png", at=T0, purpose=UploadPurpose.MASK
    )
    assert not again.changed and again.upload_id == mask.upload_id
    with pytest.raises(IdempotencyConflict, match="purpose 'mask'"):
        app.request_upload(user, request_key="m", content_type="image/png", at=T0)
    assert app.upload(user, mask.upload_id).category is ImageCategory.MASK
    assert app.upload(user, _upload(app, user)).category is ImageCategory.USER  # init: default


def test_an_upload_requested_before_purposes_is_an_init_image(app: PinkseaApplication) -> None:
    user = _user(app)
    upload_id = _upload(app, user)
    # Its Requested event as stored before the field existed: without a purpose.
    first, *rest = app.recorder.select_events(upload_id)
    state = json.loads(first.state)
    del state["purpose"]
    old = dataclasses.replace(first, state=json.dumps(state).encode())
    upload: Upload | None = None
    for stored in (old, *rest):
        event = app.mapper.to_domain_event(stored)
        assert isinstance(event, Upload.Event | Upload.Requested)
        upload = event.mutate(upload)
    assert upload is not None and upload.purpose == UploadPurpose.INIT.value
    assert upload.category is ImageCategory.USER and upload.usable

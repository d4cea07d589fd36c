"""User models (LoRAs) on the in-memory event store: the plan's flag, the verdict's rules
(safetensors only, LoRA tensors of the declared family, the size limit), tenant isolation, and
the pinning of a job's LoRAs to their verified files; old jobs' fingerprints unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from domain.application import PinkseaApplication
from domain.catalog import ModelFamily
from domain.errors import IdempotencyConflict, InvalidParameters, InvalidTransition, NotFound
from domain.jobs import JobParameters
from domain.parameters import LoraRef
from domain.subscription import CustomTerms
from domain.user_models import LORA_BYTES_MAX, LoraFacts, UserModelStatus, lora_problem

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
TERMS = CustomTerms(credits_per_month=20_000, tier="dedicated", concurrent_jobs=1, storage_gb=5)
SHA = "ab" * 32
SD15_NAMES = (
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
)
LORA = LoraFacts(size_bytes=4096, sha256=SHA, tensor_names=SD15_NAMES)


@pytest.fixture
def app() -> PinkseaApplication:
    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def _user(app: PinkseaApplication, plan: str = "enterprise") -> str:
    user = f"user-{uuid4()}"
    app.register_user(user, T0)
    if plan == "enterprise":
        app.change_plan(user, to_plan=plan, actor="admin:t", reason="t", at=T0, custom_terms=TERMS)
    return user


def _model(app: PinkseaApplication, user: str, facts: LoraFacts = LORA, key: str = "k") -> UUID:
    ticket = app.request_user_model(
        user, request_key=key, name="pink", family=ModelFamily.SD15, at=T0
    )
    app.complete_user_model(user, ticket.model_id, facts=facts, at=T0)
    return ticket.model_id


def _job(**fields: object) -> JobParameters:
    base: dict[str, object] = {"model": "tiny-sd", "prompt": "p", "steps": 4}
    return JobParameters.model_validate({**base, "width": 64, "height": 64, **fields})


def test_request_needs_lora_training_and_is_keyed_under_the_user(app: PinkseaApplication) -> None:
    with pytest.raises(InvalidTransition, match="does not allow LoRAs"):
        app.request_user_model(
            _user(app, "trial"), request_key="k", name="n", family=ModelFamily.SD15, at=T0
        )
    user = _user(app)
    first = app.request_user_model(
        user, request_key="k", name="pink", family=ModelFamily.SD15, at=T0
    )
    again = app.request_user_model(
        user, request_key="k", name="pink", family=ModelFamily.SD15, at=T0
    )
    assert first.changed and not again.changed and again.model_id == first.model_id
    assert first.key == f"models/users/{user}/{first.model_id}.safetensors"
    assert first.size_bytes_max == LORA_BYTES_MAX and first.status == "pending"
    with pytest.raises(IdempotencyConflict):
        app.request_user_model(user, request_key="k", name="pink", family=ModelFamily.SDXL, at=T0)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (LoraFacts(size_bytes=10, problem="it is not a safetensors file"), "not a safetensors"),
        (LoraFacts(size_bytes=LORA_BYTES_MAX + 1), "your plan allows"),
        (LoraFacts(size_bytes=10, sha256=SHA, tensor_names=()), "no tensors"),
        (
            LoraFacts(size_bytes=10, sha256=SHA, tensor_names=("unet.conv_in.weight",)),
            "not LoRA weights",
        ),
        (
            LoraFacts(
                size_bytes=10,
                sha256=SHA,
                tensor_names=(*SD15_NAMES, "text_encoder_2.text_model.q_proj.lora_A.weight"),
            ),
            "sdxl LoRA, not of sd1.5",
        ),
        (
            LoraFacts(
                size_bytes=10,
                sha256=SHA,
                tensor_names=("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",),
            ),
            "flux LoRA",
        ),
    ],
    ids=["pickle", "oversized", "empty", "full-weights", "sdxl", "flux"],
)
def test_a_file_that_is_no_lora_of_the_family_is_rejected(
    app: PinkseaApplication, facts: LoraFacts, reason: str
) -> None:
    user = _user(app)
    model_id = _model(app, user, facts)
    model = app.user_model(user, model_id)
    assert model.status == UserModelStatus.REJECTED.value and model.sha256 is None
    assert model.rejection is not None and reason in model.rejection
    repeat = app.complete_user_model(user, model_id, facts=LORA, at=T0)  # the verdict stands
    assert not repeat.changed and repeat.status == "rejected"


def test_lora_names_of_each_family_and_format() -> None:
    kohya_sd = ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "x.alpha")
    kohya_sdxl = (*kohya_sd, "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight")
    flux = ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight",)
    assert lora_problem(ModelFamily.SD15, SD15_NAMES) is None
    assert lora_problem(ModelFamily.SD15, kohya_sd) is None
    assert lora_problem(ModelFamily.SDXL, kohya_sdxl) is None
    assert lora_problem(ModelFamily.SDXL, SD15_NAMES) is None  # SDXL's UNet has these blocks
    assert lora_problem(ModelFamily.FLUX, flux) is None
    assert "not of flux" in (lora_problem(ModelFamily.FLUX, SD15_NAMES) or "")


def test_verified_model_is_pinned_into_a_job_and_isolated_by_tenant(
    app: PinkseaApplication,
) -> None:
    ann, bob = _user(app), _user(app)
    model_id = _model(app, ann)
    model = app.user_model(ann, model_id)
    assert (model.status, model.sha256, model.size_bytes, model.tensors) == (
        "verified", SHA, 4096, 2,
    )  # fmt: skip
    params = _job(loras=[{"id": str(model_id), "weight": 0.8}])
    pinned = app.pin_job_loras(ann, params)
    assert pinned.loras == (LoraRef(id=model_id, weight=0.8, sha256=SHA),)
    assert app.pin_job_loras(ann, pinned) == pinned  # the sent digest matches
    with pytest.raises(NotFound):
        app.pin_job_loras(bob, params)
    with pytest.raises(NotFound):
        app.user_model(bob, model_id)
    with pytest.raises(NotFound):
        app.delete_user_model(bob, model_id, at=T0)
    with pytest.raises(InvalidParameters, match="sha256"):
        app.pin_job_loras(ann, _job(loras=[{"id": str(model_id), "sha256": "cd" * 32}]))
    pending = app.request_user_model(
        ann, request_key="p", name="pending", family=ModelFamily.SD15, at=T0
    )
    with pytest.raises(InvalidParameters, match="pending"):
        app.pin_job_loras(ann, _job(loras=[{"id": str(pending.model_id)}]))
    app.delete_user_model(ann, model_id, at=T0)
    with pytest.raises(NotFound):
        app.pin_job_loras(ann, params)


def test_a_lora_of_another_family_is_refused_for_the_model(app: PinkseaApplication) -> None:
    user = _user(app)
    ticket = app.request_user_model(
        user, request_key="x", name="xl", family=ModelFamily.SDXL, at=T0
    )
    app.complete_user_model(user, ticket.model_id, facts=LORA, at=T0)
    with pytest.raises(InvalidParameters, match=r"sdxl LoRA; tiny-sd is sd1\.5"):
        app.pin_job_loras(user, _job(loras=[{"id": str(ticket.model_id)}]))


def test_job_parameters_bound_the_loras_and_keep_old_fingerprints() -> None:
    plain = _job()
    assert "loras" not in plain.as_event_data()  # a job of the first release reads the same
    assert plain.fingerprint() == _job(loras=None).fingerprint() == _job(loras=[]).fingerprint()
    ids = [str(uuid4()) for _ in range(5)]
    with pytest.raises(ValueError, match="at most 4"):
        _job(loras=[{"id": i} for i in ids])
    with pytest.raises(InvalidParameters, match="named once"):
        _job(loras=[{"id": ids[0]}, {"id": ids[0]}]).check()
    with pytest.raises(InvalidParameters, match="takes no LoRAs"):
        JobParameters(
            model="tiny-upscaler-x4",
            prompt="p",
            steps=1,
            width=64,
            height=64,
            init_image=str(uuid4()),
            scale=4,
            loras=(LoraRef(id=uuid4()),),
        ).check()
    with pytest.raises(ValueError):
        _job(loras=[{"id": ids[0], "weight": float("nan")}])


def test_a_job_with_loras_is_refused_without_lora_training(app: PinkseaApplication) -> None:
    ann = _user(app)
    model_id = _model(app, ann)
    params = app.pin_job_loras(ann, _job(loras=[{"id": str(model_id)}]))
    app.change_plan(ann, to_plan="starter", actor="admin:t", reason="downgrade", at=T0)
    refused = app.submit_job(ann, idempotency_key="j", params=params, at=T0)
    assert refused.job_id is None and refused.rejection == "model_not_in_plan"
    assert refused.detail is not None and "lora_training" in refused.detail
    app.change_plan(
        ann, to_plan="enterprise", actor="admin:t", reason="up", at=T0, custom_terms=TERMS
    )
    accepted = app.submit_job(ann, idempotency_key="j", params=params, at=T0)
    assert accepted.job_id is not None
    job = app.job(accepted.job_id)
    assert job.parameters["loras"] == [{"id": str(model_id), "weight": 1.0, "sha256": SHA}]

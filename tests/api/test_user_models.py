"""Your models (LoRAs) on the real stack: what only a model does (the plan's lora_training
flag, the size checked again on completion, a LoRA named in a job and pinned to its file, its
name sealed under the user's data key and erased with it), and its declaration for the
contract every verified object keeps (tests/api/test_verified_objects.py: the check of what
arrived, pickles and other hostile files rejected and deleted, the read model, the storage
quota, idempotency, tenant isolation)."""

from __future__ import annotations

import hashlib
import io
import pickle
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from domain.catalog import ModelFamily
from domain.personal_data import ERASED, is_sealed
from domain.user_models import NAME_FIELD
from tests.api.conftest import TINY, Kit, problem_type
from tests.api.verified_objects import POSTED, Kind, exists

pytestmark = pytest.mark.integration

TERMS: dict[str, Any] = {
    "credits_per_month": 3_000,
    "tier": "basic",
    "concurrent_jobs": 1,
    "storage_gb": 1,
}
SD15 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora"
NAME = "pink sea"


def _lora(names: tuple[str, ...] = (f"{SD15}.down.weight", f"{SD15}.up.weight")) -> bytes:
    return save({name: np.ones((4, 4), np.float32) for name in names})


def _pickle() -> bytes:
    """What torch.save writes for a legacy checkpoint: a pickle (which could run code)."""
    buffer = io.BytesIO()
    pickle.dump({f"{SD15}.down.weight": [[1.0] * 4] * 4}, buffer, protocol=4)
    return buffer.getvalue()


async def _on_lora_plan(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.set_plan(user, "enterprise", custom_terms=TERMS)


def _describes(view: dict[str, Any], body: bytes) -> None:
    assert (view["name"], view["family"], view["tensors"]) == (NAME, "sd1.5", 2)
    assert view["sha256"] == hashlib.sha256(body).hexdigest()


async def _used_by(kit: Kit, user: str, model_id: str) -> tuple[httpx.Response, ...]:
    lora: dict[str, Any] = {"loras": [{"id": model_id}]}
    return (
        await kit.submit(user, **lora),
        await kit.client.post("/v1/jobs/quote", json={**TINY, **lora}, headers=kit.auth(user)),
    )


KIND = Kind(
    name="model",
    path="/v1/models/mine",
    id_field="model_id",
    request={"name": NAME, "family": "sd1.5"},
    other_request={"name": "another name", "family": "sd1.5"},
    accepted="verified",
    file=_lora,
    form=("lora.safetensors", "application/octet-stream"),
    key=lambda user, model_id: f"models/users/{user}/{model_id}.safetensors",
    allow=_on_lora_plan,
    describes=_describes,
    used_by=_used_by,
    hostile=(
        ("pickle", _pickle(), "not a safetensors file"),  # a pickle named .safetensors
        ("zip", b"PK\x03\x04" + b"\x00" * 200, "not a safetensors file"),  # a torch checkpoint
        ("text", b"hello, I am a text file\n" * 10, "not a safetensors file"),
        ("truncated", _lora()[:-5], "not a safetensors file"),
        ("full-weights", _lora(("unet.conv_in.weight", "unet.conv_in.bias")), "not LoRA weights"),
        (
            "another-family",
            _lora((f"{SD15}.down.weight", "text_encoder_2.q_proj.lora_A.weight")),
            "sdxl LoRA, not of sd1.5",
        ),
    ),
)
_uploaded = KIND.uploaded  # tests/api/test_erasure.py uploads with it


async def test_a_job_names_a_verified_model_pinned_to_its_file(kit: Kit, user: str) -> None:
    await _on_lora_plan(kit, user)
    model = await _uploaded(kit, user)
    model_id = model["model_id"]
    accepted = await kit.submit(user, loras=[{"id": model_id, "weight": 0.8}])
    assert accepted.status_code == 202, accepted.text
    job = kit.app.job(accepted.json()["job_id"])
    assert job.parameters["loras"] == [{"id": model_id, "weight": 0.8, "sha256": model["sha256"]}]
    assert (await KIND.delete(kit, user, model_id)).status_code == 204
    gone = await kit.submit(user, loras=[{"id": model_id}])
    assert gone.status_code == 404 and problem_type(gone) == "not-found", gone.text


async def test_a_rejected_model_cannot_be_used(kit: Kit, user: str) -> None:
    await _on_lora_plan(kit, user)
    ticket = await KIND.ticket(kit, user)
    assert KIND.post(ticket, _pickle()).status_code in POSTED
    assert (await KIND.complete(kit, user, ticket["model_id"])).status_code == 422
    r = await kit.submit(user, loras=[{"id": ticket["model_id"]}])
    assert r.status_code == 422 and "rejected" in r.json()["detail"]


async def test_the_server_checks_the_size_again(
    kit: Kit, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("domain.user_models.LORA_BYTES_MAX", 4096)  # a plan's cap, made small
    await _on_lora_plan(kit, user)
    ticket = await KIND.ticket(kit, user)
    assert ticket["size_bytes_max"] == 4096  # the POST policy's bound (the contract's test)
    # Written past the policy (as a misbehaving client could not): the server checks again.
    kit.services.s3.put_object(Bucket=kit.settings.s3_bucket, Key=ticket["key"], Body=b"0" * 5000)
    r = await KIND.complete(kit, user, ticket["model_id"])
    assert r.status_code == 422 and "your plan allows 4096" in r.json()["detail"]
    assert not exists(kit, ticket["key"])


async def test_uploading_and_using_loras_is_refused_without_lora_training(
    kit: Kit, user: str
) -> None:
    r = await kit.client.post(
        "/v1/models/mine", json={"name": "x", "family": "sd1.5"}, headers=kit.auth(user)
    )
    assert r.status_code == 403 and problem_type(r) == "model-not-in-plan", r.text
    assert "lora_training" in r.json()["detail"]
    await _on_lora_plan(kit, user)
    model = await _uploaded(kit, user)
    await kit.set_plan(user, "pro")  # downgraded: the model stays, jobs may not use it
    body: dict[str, Any] = {"loras": [{"id": model["model_id"]}]}
    r = await kit.submit(user, **body)
    assert r.status_code == 403 and problem_type(r) == "model-not-in-plan", r.text
    q = await kit.client.post("/v1/jobs/quote", json={**TINY, **body}, headers=kit.auth(user))
    assert q.status_code == 200 and q.json()["reason"] == "model_not_in_plan"
    await kit.project()
    listed = (await kit.client.get("/v1/models/mine", headers=kit.auth(user))).json()
    assert [m["model_id"] for m in listed["items"]] == [model["model_id"]]


async def _listed_names(kit: Kit, user: str) -> list[str]:
    page = (await kit.client.get(KIND.path, headers=kit.auth(user))).json()
    return [model["name"] for model in page["items"]]


async def test_the_name_is_sealed_in_its_event_and_reads_erased_after_erasure(
    kit: Kit, user: str
) -> None:
    await _on_lora_plan(kit, user)
    model = await _uploaded(kit, user)
    model_id = UUID(model["model_id"])
    assert model["name"] == NAME  # opened for its owner
    await kit.project()
    assert await _listed_names(kit, user) == [NAME]
    stored = kit.app.recorder.select_events(model_id)
    assert stored and not any(NAME.encode() in event.state for event in stored)
    sealed = kit.app.user_model(user, model_id).name
    assert is_sealed(sealed)
    projected = await kit.services.pool.fetchval(
        "SELECT name FROM user_models WHERE model_id = $1", model_id
    )
    assert projected == sealed  # the read model keeps it sealed too
    # A replay under the same key opens the recorded name to compare it.
    replay = await KIND.start(kit, user, **{"Idempotency-Key": "k"})
    assert (await KIND.start(kit, user, **{"Idempotency-Key": "k"})).json() == replay.json()

    await kit.project()
    erased = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert erased.status_code == 200 and erased.json()["models_deleted"] == 2, erased.text
    opener = await kit.services.personal_keys.opener(user)
    assert opener.open(NAME_FIELD, sealed) == ERASED  # in every replay and rebuild from now on


async def test_a_name_recorded_before_sealing_reads_as_it_is(kit: Kit, user: str) -> None:
    await _on_lora_plan(kit, user)
    result = kit.app.request_user_model(
        user, request_key="old", name="an old name", family=ModelFamily.SD15, at=datetime.now(UTC)
    )  # no data key: as the API recorded it before sealing
    assert kit.app.user_model(user, result.model_id).name == "an old name"
    view = await KIND.get(kit, user, str(result.model_id))
    assert view.status_code == 200 and view.json()["name"] == "an old name"
    await kit.project()
    assert await _listed_names(kit, user) == ["an old name"]
    replay = await kit.client.post(
        KIND.path,
        json={"name": "an old name", "family": "sd1.5"},
        headers={**kit.auth(user), "Idempotency-Key": "old"},
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"

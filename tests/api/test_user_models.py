"""Your models (LoRAs) on the real stack: a presigned POST to S3, the server's check of what
arrived (pickles and other hostile files rejected and deleted), the read model, the storage
quota, the plan's lora_training flag, tenant isolation, and a LoRA named in a job."""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import httpx
import numpy as np
import pytest
from botocore.exceptions import ClientError
from safetensors.numpy import save

from tests.api.conftest import TINY, Kit, problem_type

pytestmark = pytest.mark.integration

TERMS: dict[str, Any] = {
    "credits_per_month": 3_000,
    "tier": "basic",
    "concurrent_jobs": 1,
    "storage_gb": 1,
}
SD15 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora"


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


async def _start(kit: Kit, user: str, family: str = "sd1.5") -> dict[str, Any]:
    r = await kit.client.post(
        "/v1/models/mine", json={"name": "pink sea", "family": family}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _post(ticket: dict[str, Any], body: bytes) -> httpx.Response:
    files = {"file": ("lora.safetensors", body, "application/octet-stream")}
    return httpx.post(ticket["url"], data=ticket["fields"], files=files, timeout=30)


async def _complete(kit: Kit, user: str, model_id: str) -> httpx.Response:
    return await kit.client.post(f"/v1/models/mine/{model_id}/complete", headers=kit.auth(user))


async def _uploaded(kit: Kit, user: str, body: bytes | None = None) -> dict[str, Any]:
    ticket = await _start(kit, user)
    assert _post(ticket, body or _lora()).status_code in (200, 201, 204)
    r = await _complete(kit, user, ticket["model_id"])
    assert r.status_code == 200, r.text
    return dict(r.json())


def _exists(kit: Kit, key: str) -> bool:
    try:
        kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    except ClientError:
        return False
    return True


async def test_upload_complete_list_quota_use_and_delete(kit: Kit, user: str) -> None:
    await _on_lora_plan(kit, user)
    lora = _lora()
    ticket = await _start(kit, user)
    model_id = ticket["model_id"]
    assert ticket["key"] == f"models/users/{user}/{model_id}.safetensors"
    early = await _complete(kit, user, model_id)  # nothing uploaded yet: records nothing
    assert early.status_code == 409 and problem_type(early) == "invalid-transition"
    assert _post(ticket, lora).status_code in (200, 201, 204)
    done = await _complete(kit, user, model_id)
    assert done.status_code == 200, done.text
    view = done.json()
    assert (view["status"], view["family"], view["tensors"], view["size_bytes"]) == (
        "verified", "sd1.5", 2, len(lora),
    )  # fmt: skip
    assert view["sha256"] == hashlib.sha256(lora).hexdigest()
    again = await _complete(kit, user, model_id)
    assert again.status_code == 200 and again.json() == view

    await kit.project()
    listed = (await kit.client.get("/v1/models/mine", headers=kit.auth(user))).json()
    assert [m["model_id"] for m in listed["items"]] == [model_id]
    assert listed["next_cursor"] is None
    one = await kit.client.get(f"/v1/models/mine/{model_id}", headers=kit.auth(user))
    assert one.status_code == 200 and one.json() == view
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == len(lora)  # models count in the storage quota

    # A job names it; the accepted job records it pinned to the verified file.
    accepted = await kit.submit(user, loras=[{"id": model_id, "weight": 0.8}])
    assert accepted.status_code == 202, accepted.text
    job = kit.app.job(accepted.json()["job_id"])
    assert job.parameters["loras"] == [{"id": model_id, "weight": 0.8, "sha256": view["sha256"]}]

    gone = await kit.client.delete(f"/v1/models/mine/{model_id}", headers=kit.auth(user))
    assert gone.status_code == 204 and int(gone.headers["X-Position"]) > 0
    assert not _exists(kit, ticket["key"])
    await kit.project()
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == 0
    for r in (
        await kit.client.get(f"/v1/models/mine/{model_id}", headers=kit.auth(user)),
        await kit.client.delete(f"/v1/models/mine/{model_id}", headers=kit.auth(user)),
        await kit.submit(user, loras=[{"id": model_id}]),
    ):
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_pickle(), "not a safetensors file"),  # a pickle named .safetensors
        (b"PK\x03\x04" + b"\x00" * 200, "not a safetensors file"),  # a torch zip checkpoint
        (b"hello, I am a text file\n" * 10, "not a safetensors file"),
        (_lora()[:-5], "not a safetensors file"),  # truncated
        (_lora(("unet.conv_in.weight", "unet.conv_in.bias")), "not LoRA weights"),
        (
            _lora((f"{SD15}.down.weight", "text_encoder_2.q_proj.lora_A.weight")),
            "sdxl LoRA, not of sd1.5",
        ),
    ],
    ids=["pickle", "zip", "text", "truncated", "full-weights", "another-family"],
)
async def test_hostile_files_are_rejected_and_deleted(
    kit: Kit, user: str, body: bytes, reason: str
) -> None:
    await _on_lora_plan(kit, user)
    ticket = await _start(kit, user)
    assert _post(ticket, body).status_code in (200, 201, 204)
    r = await _complete(kit, user, ticket["model_id"])
    assert r.status_code == 422 and problem_type(r) == "upload-rejected", r.text
    assert reason in r.json()["detail"]
    assert not _exists(kit, ticket["key"])  # nothing half-kept
    again = await _complete(kit, user, ticket["model_id"])  # the verdict is recorded
    assert again.status_code == 422 and problem_type(again) == "upload-rejected"
    await kit.project()
    view = await kit.client.get(f"/v1/models/mine/{ticket['model_id']}", headers=kit.auth(user))
    assert view.json()["status"] == "rejected" and view.json()["sha256"] is None
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == 0
    r = await kit.submit(user, loras=[{"id": ticket["model_id"]}])
    assert r.status_code == 422 and "rejected" in r.json()["detail"]


async def test_the_post_policy_and_the_check_bound_the_size(
    kit: Kit, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("domain.user_models.LORA_BYTES_MAX", 4096)  # a plan's cap, made small
    await _on_lora_plan(kit, user)
    ticket = await _start(kit, user)
    assert ticket["size_bytes_max"] == 4096
    oversized = _post(ticket, _lora() + b"\x00" * 4096)
    assert oversized.status_code == 400 and b"EntityTooLarge" in oversized.content
    assert not _exists(kit, ticket["key"])
    # Written past the policy (as a misbehaving client could not): the server checks again.
    kit.services.s3.put_object(Bucket=kit.settings.s3_bucket, Key=ticket["key"], Body=b"0" * 5000)
    r = await _complete(kit, user, ticket["model_id"])
    assert r.status_code == 422 and "your plan allows 4096" in r.json()["detail"]
    assert not _exists(kit, ticket["key"])


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


async def test_another_users_model_is_a_404_everywhere(kit: Kit, user: str, other: str) -> None:
    await _on_lora_plan(kit, user)
    await _on_lora_plan(kit, other)
    model = await _uploaded(kit, user)
    await kit.project()
    model_id = model["model_id"]
    lora: dict[str, Any] = {"loras": [{"id": model_id}]}
    for r in (
        await kit.client.get(f"/v1/models/mine/{model_id}", headers=kit.auth(other)),
        await _complete(kit, other, model_id),
        await kit.client.delete(f"/v1/models/mine/{model_id}", headers=kit.auth(other)),
        await kit.submit(other, **lora),
        await kit.client.post("/v1/jobs/quote", json={**TINY, **lora}, headers=kit.auth(other)),
    ):
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text
        assert user not in r.text
    assert (await kit.client.get("/v1/models/mine", headers=kit.auth(other))).json()["items"] == []
    assert _exists(kit, f"models/users/{user}/{model_id}.safetensors")  # untouched

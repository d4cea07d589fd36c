"""Erasure that keeps the ledger exact (issue 17, part 5): prompts are sealed under a per-user
key outside the event store; DELETE /v1/me (and the admin's route) destroys the key and the
user's images and uploads, and everything else still replays and verifies."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api import erasure as erasure_module
from api.services import now
from audit.receipts import issue_receipt, verify_receipt
from audit.seals import seal
from audit.store import stream_aggregates
from audit.verify import verify
from domain.jobs import JobParameters
from domain.personal_data import ERASED, PersonalData, is_sealed, personal_data_id
from domain.uploads import upload_key
from domain.user_models import user_model_key
from gpu_consumer.outputs import image_key, thumbnail_key
from projections.jobs import JobsProjection
from tests.api import test_uploads as uploads_test
from tests.api import test_user_models as user_models_test
from tests.api.conftest import Kit, problem_type, stored_texts
from tests.api.project_now import project_now

pytestmark = pytest.mark.integration

PROMPT = "my neighbour's red door at dusk, 42 Elm Street"
NEGATIVE = "my ex's face"


async def _completed_job(
    kit: Kit, user: str, *, prompt: str = PROMPT, count: int = 1
) -> tuple[str, list[Any]]:
    """A completed job of ``count`` images whose objects are in S3, as a worker leaves them."""
    r = await kit.submit(user, prompt=prompt, negative_prompt=NEGATIVE, batch_size=count)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    s3, bucket = kit.services.s3, kit.settings.s3_bucket
    images = []
    for i in range(count):
        name = f"{job_id}-{i}"
        png = b"\x89PNG fake " + name.encode()
        s3.put_object(Bucket=bucket, Key=image_key(user, name), Body=png)
        s3.put_object(Bucket=bucket, Key=thumbnail_key(user, name), Body=b"RIFF webp")
        images.append(
            {
                "name": name,
                "key": image_key(user, name),
                "thumbnail_key": thumbnail_key(user, name),
                "size_bytes": len(png),
                "width": 64,
                "height": 64,
            }
        )
    kit.run_job(job_id, images=images)  # type: ignore[arg-type]
    await kit.project()
    return job_id, images


async def _ledger_ok(kit: Kit) -> None:
    await kit.project()
    pool = await asyncpg.create_pool(kit.settings.database_url, min_size=2, max_size=2)
    try:
        async with pool.acquire() as conn:
            report = await verify(pool, stream_aggregates(conn))
    finally:
        await pool.close()
    assert report.ok, [(f.check, f.detail) for f in report.findings]


async def test_prompts_are_sealed_in_the_store_and_open_in_the_api(kit: Kit, user: str) -> None:
    job_id, _ = await _completed_job(kit, user)
    texts = await stored_texts(kit, job_id)
    assert texts and not any(PROMPT in t or NEGATIVE in t for t in texts)
    stored = kit.app.job(UUID(job_id)).parameters
    assert is_sealed(stored["prompt"]) and is_sealed(stored["negative_prompt"])
    row = await kit.services.pool.fetchval(
        "SELECT parameters FROM jobs WHERE job_id = $1", UUID(job_id)
    )
    assert PROMPT not in row and is_sealed(json.loads(row)["prompt"])
    view = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert (view["prompt"], view["negative_prompt"]) == (PROMPT, NEGATIVE)
    listed = (await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"]
    assert [j["prompt"] for j in listed if j["job_id"] == job_id] == [PROMPT]


async def test_a_replayed_submission_is_the_same_job_and_another_body_conflicts(
    kit: Kit, user: str
) -> None:
    first = await kit.submit(user, "k1", prompt=PROMPT)
    again = await kit.submit(user, "k1", prompt=PROMPT)
    assert first.status_code == 202 and again.status_code == 202, again.text
    assert again.json()["job_id"] == first.json()["job_id"] and again.json()["replayed"]
    other = await kit.submit(user, "k1", prompt=PROMPT + "!")
    assert other.status_code == 409, other.text
    stored = kit.app.job(UUID(first.json()["job_id"]))
    assert PROMPT not in stored.fingerprint  # a keyed digest, not the text's


async def test_erasure_shreds_prompts_and_files_and_the_ledger_still_verifies(
    kit: Kit, user: str, other: str
) -> None:
    job_id, images = await _completed_job(kit, user, count=2)
    second, _ = await _completed_job(kit, user, count=3)  # deleted beside the first
    other_job, other_images = await _completed_job(kit, other, prompt="someone else's words")
    queued = (await kit.submit(user, prompt=PROMPT)).json()["job_id"]  # never runs now
    await kit.project()
    await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))  # cached, sealed
    signed_in = {"Authorization": f"Bearer {kit.token(user, email='eve@example.com')}"}
    assert (await kit.client.get("/v1/me", headers=signed_in)).json()["notification_email"]
    signing_key = Ed25519PrivateKey.generate()
    async with kit.services.pool.acquire() as conn:
        assert await seal(conn, signing_key, now()) is not None
        receipt = await issue_receipt(conn, UUID(job_id), signing_key, now())
    balance_before = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    account_before = kit.app.account(user)

    r = await kit.client.delete("/v1/me", headers=signed_in)
    assert r.status_code == 200, r.text
    erasure = r.json()
    assert erasure["changed"] and erasure["key_destroyed"]
    assert erasure["images_deleted"] == 5 and erasure["cancelled_jobs"] == 1
    assert erasure["objects_deleted"] == 10
    await kit.project()

    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{queued}"):
        view = (await kit.client.get(path, headers=kit.auth(user))).json()
        assert view["prompt"] == ERASED, view
    assert (await kit.client.get(f"/v1/jobs/{queued}", headers=kit.auth(user))).json()[
        "status"
    ] == "cancelled"
    listed = (await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"]
    assert listed and {j["prompt"] for j in listed} == {ERASED}
    for key in (k for i in images for k in (i["key"], i["thumbnail_key"])):
        with pytest.raises(ClientError):
            kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    assert kit.app.job(UUID(job_id)).deleted_images.keys() == {i["name"] for i in images}
    assert len(kit.app.job(UUID(second)).deleted_images) == 3

    # The ledger: the settled charge stays, only the cancelled job's hold came back.
    account = kit.app.account(user)
    assert account.version > account_before.version
    balance = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    assert balance["available_mc"] + balance["held_mc"] == (
        balance_before["available_mc"] + balance_before["held_mc"]
    )
    assert balance["held_mc"] == 0
    await _ledger_ok(kit)
    # The receipt hashes the parameters as stored (sealed): issued again, it is the same.
    async with kit.services.pool.acquire() as conn:
        again = await issue_receipt(conn, UUID(job_id), signing_key, now())
    assert again["parameters_sha256"] == receipt["parameters_sha256"]
    assert verify_receipt(again, signing_key.public_key()) == []
    # The sign-in address is forgotten (the erasing request's own included).
    assert (
        await kit.services.pool.fetchval(
            "SELECT email FROM notification_preferences WHERE user_id = $1", user
        )
        is None
    )

    # Another user's data is untouched.
    theirs = (await kit.client.get(f"/v1/jobs/{other_job}", headers=kit.auth(other))).json()
    assert theirs["prompt"] == "someone else's words"
    kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=other_images[0]["key"])

    # The read models rebuilt from the event store still read as erased.
    async with kit.services.pool.acquire() as conn, conn.transaction():
        await conn.execute(f"TRUNCATE {', '.join(JobsProjection.tables)}")
        await conn.execute("DELETE FROM projection_versions WHERE projection = 'jobs'")
    await project_now(kit.app, kit.settings.database_url, start=1)
    await kit.services.job_cache.delete(job_id)  # read the rebuilt row, not the cache
    view = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert view["prompt"] == ERASED and view["charged_mc"] == kit.app.job(UUID(job_id)).charged_mc

    # A repeat changes nothing; the erasure is on record, without the prompt.
    repeat = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert repeat.status_code == 200 and not repeat.json()["changed"], repeat.text
    record = kit.app.find(personal_data_id(user))
    assert isinstance(record, PersonalData) and record.erasures == 1


async def test_a_large_account_is_erased_in_bounded_requests_repeated(
    kit: Kit, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request does a bounded share (here 2 deletions and 2 pages of 3 objects, the
    bounds made small): the key goes in the first, and the same request repeated does the
    rest, each answering 202 until one answers 200 complete."""
    monkeypatch.setattr(erasure_module, "DELETIONS_PER_REQUEST", 2)
    monkeypatch.setattr(erasure_module, "S3_PAGE", 3)
    monkeypatch.setattr(erasure_module, "S3_PAGES_PER_REQUEST", 2)
    job_id, images = await _completed_job(kit, user, count=5)  # 5 deletions, 10 objects
    upload = await uploads_test._uploaded(kit, user)  # 1 deletion, 1 object
    await kit.project()
    keys = [k for i in images for k in (i["key"], i["thumbnail_key"])]
    keys.append(upload_key(user, UUID(upload["upload_id"]), "image/png"))

    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 202 and r.headers["Retry-After"] == "1", r.text
    answers = [r.json()]
    assert answers[0]["key_destroyed"] and not answers[0]["complete"]
    # Erased at once: the prompt reads erased before the deletions are done.
    view = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert view["prompt"] == ERASED
    for _ in range(12):  # 6 deletions at 2 a request, then 11 objects at 6: 5 requests
        if answers[-1]["complete"]:
            break
        await kit.project()  # the deletions recorded reach the read model the next one reads
        r = await kit.client.delete("/v1/me", headers=kit.auth(user))
        assert r.status_code == (200 if r.json()["complete"] else 202), r.text
        answers.append(r.json())
    assert answers[-1]["complete"], answers
    assert len(answers) == 5, answers
    for answer in answers:
        assert answer["images_deleted"] + answer["uploads_deleted"] <= 2, answers
        assert answer["objects_deleted"] <= 6, answers
    assert [a["key_destroyed"] for a in answers] == [True, False, False, False, False]
    assert sum(a["images_deleted"] for a in answers) == 5
    assert sum(a["uploads_deleted"] for a in answers) == 1
    assert sum(a["objects_deleted"] for a in answers) == len(keys) == 11
    assert not any(uploads_test._exists(kit, k) for k in keys)
    assert len(kit.app.job(UUID(job_id)).deleted_images) == 5
    record = kit.app.find(personal_data_id(user))
    assert isinstance(record, PersonalData) and record.erasures == 3  # the deleting requests
    repeat = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert repeat.status_code == 200 and repeat.json()["complete"], repeat.text
    assert not repeat.json()["changed"]
    await _ledger_ok(kit)


async def test_admin_erasure_needs_an_admin_and_a_user(kit: Kit, user: str) -> None:
    job_id, _ = await _completed_job(kit, user)
    path = f"/v1/admin/users/{user}/personal-data"
    r = await kit.client.delete(path, headers=kit.auth("someone"))
    assert r.status_code == 403, r.text
    missing = await kit.client.delete(
        "/v1/admin/users/nobody-here/personal-data", headers=kit.auth("root", admin=True)
    )
    assert missing.status_code == 404 and problem_type(missing).endswith("not-found")
    await kit.project()  # the sign-ins above (registrations) before the erasure waits on them
    r = await kit.client.delete(path, headers=kit.auth("root", admin=True))
    assert r.status_code == 200 and r.json()["key_destroyed"], r.text
    view = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert view["prompt"] == ERASED
    # The user goes on: a new submission is sealed under a new key and reads back.
    r = await kit.submit(user, prompt="a fresh start")
    assert r.status_code == 202, r.text
    await kit.project()
    view = (await kit.client.get(f"/v1/jobs/{r.json()['job_id']}", headers=kit.auth(user))).json()
    assert view["prompt"] == "a fresh start"


async def test_the_admin_erasure_is_bounded_and_answers_as_delete_me(
    kit: Kit, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin's route does the bounded share of DELETE /v1/me: 202 with Retry-After while
    work is left, 200 once complete (here 3 deletions at 2 a request)."""
    monkeypatch.setattr(erasure_module, "DELETIONS_PER_REQUEST", 2)
    await _completed_job(kit, user, count=3)
    path = f"/v1/admin/users/{user}/personal-data"
    r = await kit.client.delete(path, headers=kit.auth("root", admin=True))
    assert r.status_code == 202 and r.headers["Retry-After"] == "1", r.text
    assert not r.json()["complete"] and r.json()["images_deleted"] == 2, r.text
    await kit.project()
    r = await kit.client.delete(path, headers=kit.auth("root", admin=True))
    assert r.status_code == 200 and "Retry-After" not in r.headers, r.text
    assert r.json()["complete"] and r.json()["images_deleted"] == 1, r.text
    document = (await kit.client.get("/openapi.json")).json()
    answers = document["paths"]["/v1/admin/users/{user_id}/personal-data"]["delete"]["responses"]
    assert {"200", "202"} <= set(answers) and "Retry-After" in answers["202"]["headers"], answers


async def test_erasure_deletes_uploads_and_loras_with_their_objects(kit: Kit, user: str) -> None:
    await user_models_test._on_lora_plan(kit, user)
    model = await user_models_test._uploaded(kit, user)
    upload = await uploads_test._uploaded(kit, user)
    await kit.project()
    keys = [
        user_model_key(user, UUID(model["model_id"])),
        upload_key(user, UUID(upload["upload_id"]), "image/png"),
    ]
    assert all(uploads_test._exists(kit, k) for k in keys)
    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    assert (r.json()["uploads_deleted"], r.json()["models_deleted"]) == (1, 1)
    assert not any(uploads_test._exists(kit, k) for k in keys)
    await kit.project()
    gone = [
        await kit.client.get(f"/v1/uploads/{upload['upload_id']}", headers=kit.auth(user)),
        await kit.client.get(f"/v1/models/mine/{model['model_id']}", headers=kit.auth(user)),
    ]
    assert [g.status_code for g in gone] == [404, 404]
    record = kit.app.find(personal_data_id(user))
    assert isinstance(record, PersonalData) and record.erasures == 1


async def test_a_lora_not_projected_yet_is_erased_once_the_read_model_has_it(
    kit: Kit, user: str
) -> None:
    """A LoRA completed a moment before the erasure, not yet in the read model the erasure
    finds files in: the request stays incomplete (its object kept, the model still the
    domain's) rather than call the erasure done with the LoRA left; the repeat erases it."""
    await user_models_test._on_lora_plan(kit, user)
    await kit.project()
    model = await user_models_test._uploaded(kit, user)  # not projected
    model_id = UUID(model["model_id"])
    key = user_model_key(user, model_id)
    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 202 and r.json()["complete"] is False, r.text
    assert r.json()["models_deleted"] == 0 and uploads_test._exists(kit, key)
    await kit.project()
    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["models_deleted"] == 1, r.text
    assert not uploads_test._exists(kit, key)
    assert kit.app.find(model_id).deleted


async def test_a_job_from_before_sealing_reads_as_it_was_stored(kit: Kit, user: str) -> None:
    """Events recorded before sealing hold their prompts in plaintext: they read as before
    (and erasure cannot reach them: README, "Personal data and erasure")."""
    await kit.client.get("/v1/me", headers=kit.auth(user))
    params = JobParameters(model="tiny-sd", prompt="an old prompt", steps=4, width=64, height=64)
    result = kit.app.submit_job(user, idempotency_key="old", params=params, at=now())
    assert result.job_id is not None
    assert kit.app.job(result.job_id).parameters["prompt"] == "an old prompt"  # no sealer
    await kit.project()
    view = (await kit.client.get(f"/v1/jobs/{result.job_id}", headers=kit.auth(user))).json()
    assert view["prompt"] == "an old prompt"
    # Its key's replay through the API is the same job (its fingerprint is the plain one).
    replay = await kit.submit(user, "old", prompt="an old prompt")
    assert replay.status_code == 202 and replay.json()["job_id"] == str(result.job_id)


async def test_image_metadata_and_remix_open_the_sealed_prompt(kit: Kit, user: str) -> None:
    _, images = await _completed_job(kit, user)
    name = images[0]["name"]
    one = (await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))).json()
    assert (one["metadata"]["prompt"], one["metadata"]["negative_prompt"]) == (PROMPT, NEGATIVE)
    listed = (await kit.client.get("/v1/images", headers=kit.auth(user))).json()["items"]
    assert [i["metadata"]["prompt"] for i in listed if i["name"] == name] == [PROMPT]
    r = await kit.client.post(f"/v1/images/{name}/remix", json={}, headers=kit.auth(user))
    assert r.status_code == 202, r.text
    remixed = kit.app.job(UUID(r.json()["job_id"])).parameters
    assert is_sealed(remixed["prompt"])  # sealed again, under the same key
    await kit.project()
    view = (await kit.client.get(f"/v1/jobs/{r.json()['job_id']}", headers=kit.auth(user))).json()
    assert view["prompt"] == PROMPT


async def test_after_an_erasure_a_new_key_opens_new_prompts_and_old_ones_read_erased(
    kit: Kit, user: str
) -> None:
    old_job, _ = await _completed_job(kit, user)
    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["key_destroyed"], r.text
    # The user goes on: the next submission makes a key of the next generation.
    fresh = await kit.submit(user, prompt="a new beginning")
    assert fresh.status_code == 202, fresh.text
    await kit.project()
    generation = await kit.services.pool.fetchval(
        "SELECT generation FROM personal_data_keys WHERE user_id = $1", user
    )
    assert generation == 2
    listed = await kit.client.get("/v1/jobs", headers=kit.auth(user))
    assert listed.status_code == 200, listed.text  # before generations: a 500 here
    prompts = {j["job_id"]: j["prompt"] for j in listed.json()["items"]}
    assert prompts == {old_job: ERASED, fresh.json()["job_id"]: "a new beginning"}
    await kit.services.job_cache.delete(old_job)
    view = await kit.client.get(f"/v1/jobs/{old_job}", headers=kit.auth(user))
    assert view.status_code == 200 and view.json()["prompt"] == ERASED, view.text
    # Erased again: both generations read erased; the row keeps the count, not a key.
    again = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert again.status_code == 200 and again.json()["key_destroyed"], again.text
    await kit.project()
    row = await kit.services.pool.fetchrow(
        "SELECT wrapped_key, generation, erased_at FROM personal_data_keys WHERE user_id = $1",
        user,
    )
    assert row["wrapped_key"] is None and row["generation"] == 2 and row["erased_at"] is not None
    listed = (await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"]
    assert {j["prompt"] for j in listed} == {ERASED}


async def test_a_prompt_that_looks_sealed_is_taken_as_written(kit: Kit, user: str) -> None:
    looks = "sealed:v1:AAAA a prompt a person may well write"
    r = await kit.submit(user, prompt=looks, negative_prompt="sealed:v2:1:x")
    assert r.status_code == 202, r.text
    await kit.project()
    view = await kit.client.get(f"/v1/jobs/{r.json()['job_id']}", headers=kit.auth(user))
    assert view.status_code == 200, view.text
    assert (view.json()["prompt"], view.json()["negative_prompt"]) == (looks, "sealed:v2:1:x")
    stored = await stored_texts(kit, r.json()["job_id"])
    assert not any(looks in text for text in stored)

"""Image organisation on the real stack: starred and is_intermediate set by their owner (each
change an event of the image's job), the filters of GET /v1/images (intermediates left out by
default), every image's generation metadata equal to what its job was submitted with, and
the flags kept by a replay of the store and compared by `ledger verify`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from domain.jobs import ImageRecord
from domain.personal_data import is_sealed
from eventstore.contract import envelope_for
from infra.settings import Settings
from projections.jobs import JobsProjection
from projections.runner import apply_gated
from tests.api.conftest import Kit, problem_type
from tests.api.test_images import _job_with_images
from tests.audit.test_verify_and_export import project_everything, run_verify
from tests.integration.streaming_kit import T0, TINY, fresh_database, new_app

pytestmark = pytest.mark.integration


async def _names(kit: Kit, user: str, query: str = "") -> list[str]:
    r = await kit.client.get(f"/v1/images{query}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return [i["name"] for i in r.json()["items"]]


async def _patch(kit: Kit, user: str, name: str, body: Any) -> Any:
    r = await kit.client.patch(f"/v1/images/{name}", json=body, headers=kit.auth(user))
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Position"]) > 0
    return r.json()


async def test_flags_are_set_by_their_owner_and_filter_the_list(
    kit: Kit, user: str, other: str
) -> None:
    job_id, images = await _job_with_images(kit, user, count=3)
    first, middle, last = (i["name"] for i in images)
    fresh = (await kit.client.get(f"/v1/images/{first}", headers=kit.auth(user))).json()
    assert (fresh["starred"], fresh["is_intermediate"]) == (False, False)
    assert (fresh["image_category"], fresh["image_origin"]) == ("general", "internal")

    starred = await _patch(kit, user, first, {"starred": True})
    assert (starred["name"], starred["starred"], starred["is_intermediate"]) == (first, True, False)
    assert starred["url"].startswith(kit.settings.s3_endpoint_url)
    hidden = await _patch(kit, user, middle, {"is_intermediate": True})
    assert (hidden["starred"], hidden["is_intermediate"]) == (False, True)
    again = await _patch(kit, user, first, {"starred": True})  # nothing to change
    assert again["starred"] is True
    both = await _patch(kit, user, last, {"starred": True, "is_intermediate": False})
    assert (both["starred"], both["is_intermediate"]) == (True, False)
    await _patch(kit, user, last, {"starred": False})
    job = kit.app.job(uuid.UUID(job_id))
    assert (job.starred_images, job.intermediate_images) == ({first}, {middle})

    bodies: list[Any] = [{"starred": "yes"}, {"starred": 1}, {"is_intermediate": None, "x": 1}, []]
    for bad in bodies:
        r = await kit.client.patch(f"/v1/images/{first}", json=bad, headers=kit.auth(user))
        assert r.status_code == 422 and problem_type(r) == "invalid-request", (bad, r.text)
    r = await kit.client.patch(
        f"/v1/images/{first}", json={"starred": False}, headers=kit.auth(other)
    )
    assert r.status_code == 404 and problem_type(r) == "not-found"
    assert kit.app.job(uuid.UUID(job_id)).starred_images == {first}  # B changed nothing

    await kit.project()
    assert await _names(kit, user) == [last, first]  # the intermediate one is left out
    assert await _names(kit, user, "?is_intermediate=true") == [middle]
    assert await _names(kit, user, "?starred=true") == [first]
    assert await _names(kit, user, "?starred=false") == [last]
    assert await _names(kit, user, "?starred=true&is_intermediate=true") == []
    assert await _names(kit, user, "?category=general&origin=internal") == [last, first]
    assert await _names(kit, user, "?category=mask") == []
    assert await _names(kit, user, "?origin=external") == []
    for query in ("?category=portrait", "?origin=elsewhere", "?starred=maybe"):
        r = await kit.client.get(f"/v1/images{query}", headers=kit.auth(user))
        assert r.status_code == 422 and problem_type(r) == "invalid-request", (query, r.text)
    # The filters narrow the same order: a filtered page's cursor continues it.
    r = await kit.client.get("/v1/images?category=general&limit=1", headers=kit.auth(user))
    page = r.json()
    assert [i["name"] for i in page["items"]] == [last]
    assert await _names(kit, user, f"?category=general&cursor={page['next_cursor']}") == [first]
    r = await kit.client.get(f"/v1/images/{middle}", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["is_intermediate"] is True  # read by its name
    assert await _names(kit, other, "?starred=true") == []

    r = await kit.client.delete(f"/v1/images/{first}", headers=kit.auth(user))
    assert r.status_code == 204
    await kit.project()
    r = await kit.client.patch(
        f"/v1/images/{first}", json={"starred": False}, headers=kit.auth(user)
    )
    assert r.status_code == 404 and problem_type(r) == "not-found"  # deleted: gone
    assert await _names(kit, user, "?starred=true") == []


async def test_every_image_carries_the_parameters_it_was_made_with(kit: Kit, user: str) -> None:
    submitted: dict[str, Any] = {
        "prompt": "a pink sea at dawn",
        "negative_prompt": "fog",
        "steps": 5,
        "seed": 42,
        "guidance_scale": 5.5,
        "scheduler": "euler",
        "batch_size": 2,
    }
    r = await kit.submit(user, **submitted)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    image: ImageRecord = {
        "name": f"{job_id}-1",
        "key": f"users/{user}/images/{job_id}-1.png",
        "thumbnail_key": f"users/{user}/thumbnails/{job_id}-1.webp",
        "size_bytes": 10,
        "width": 64,
        "height": 64,
    }
    kit.run_job(job_id, images=[image])
    await kit.project()
    listed = (await kit.client.get("/v1/images", headers=kit.auth(user))).json()["items"]
    one = (await kit.client.get(f"/v1/images/{image['name']}", headers=kit.auth(user))).json()
    expected = {
        "model": "tiny-sd",
        "prompt": "a pink sea at dawn",
        "negative_prompt": "fog",
        "seed": 42,
        "steps": 5,
        "scheduler": "euler",
        "guidance_scale": 5.5,
        "width": 64,
        "height": 64,
        "init_image": None,
        "strength": None,
        "mask": None,
        "scale": None,
        "loras": None,
        "style_preset": None,
    }
    assert one["metadata"] == expected
    # Stored sealed (domain/personal_data.py), shown opened.
    assert is_sealed(kit.app.job(uuid.UUID(job_id)).parameters["prompt"])
    assert [i["metadata"] for i in listed] == [expected]

    # No seed asked for: the metadata says the one the job ran with.
    unseeded = (await kit.submit(user)).json()["job_id"]
    kit.run_job(unseeded, images=[{**image, "name": f"{unseeded}-0"}])
    await kit.project()
    r = await kit.client.get(f"/v1/images/{unseeded}-0", headers=kit.auth(user))
    job = (await kit.client.get(f"/v1/jobs/{unseeded}", headers=kit.auth(user))).json()
    assert r.json()["metadata"]["seed"] == job["seed"] == kit.app.job(uuid.UUID(unseeded)).seed


# ------------------------------------------------------------------- replay and verify

_IMAGE_ROWS = (
    "SELECT name, starred, is_intermediate, image_category, image_origin, deleted_at"
    " FROM images ORDER BY name"
)


async def test_a_replay_keeps_the_flags_and_verify_compares_them(database_url: str) -> None:
    with fresh_database(database_url) as url:
        settings = Settings(database_url=url)
        app = new_app(settings)
        try:
            user = "flagger"
            app.register_user(user, T0)
            job_id = app.submit_job(user, idempotency_key="k", params=TINY, at=T0).job_id
            assert job_id is not None
            app.record_dispatch(job_id, attempt=1, worker_id="w", at=T0)
            app.record_start(job_id, attempt=1, worker_id="w", gpu="T4", at=T0)
            images: list[ImageRecord] = [
                {
                    "name": f"{job_id}-{i}",
                    "key": f"users/{user}/images/{job_id}-{i}.png",
                    "thumbnail_key": f"users/{user}/thumbnails/{job_id}-{i}.webp",
                    "size_bytes": 100,
                    "width": 64,
                    "height": 64,
                }
                for i in range(2)
            ]
            app.complete_job(job_id, attempt=1, gpu_ms=90, cuda_ms=80, images=images, at=T0)
            one, two = (i["name"] for i in images)
            app.flag_image(
                job_id, user_id=user, name=one, starred=True, is_intermediate=True, at=T0
            )
            app.flag_image(job_id, user_id=user, name=two, starred=True, at=T0)
            app.flag_image(job_id, user_id=user, name=two, starred=False, at=T0)

            pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
            try:
                await project_everything(app, pool)
                async with pool.acquire() as conn:
                    before = [tuple(r) for r in await conn.fetch(_IMAGE_ROWS)]
                    assert [r[:3] for r in before] == [(one, True, True), (two, False, False)]
                    await _replay_jobs(app, conn)
                    assert [tuple(r) for r in await conn.fetch(_IMAGE_ROWS)] == before
            finally:
                await pool.close()

            clean = run_verify(settings)
            assert clean.returncode == 0, clean.stdout + clean.stderr
            conn = await asyncpg.connect(url)
            try:
                corruptions = (
                    ("starred = NOT starred", "starred = NOT starred"),
                    (
                        "is_intermediate = NOT is_intermediate",
                        "is_intermediate = NOT is_intermediate",
                    ),
                    ("image_category = 'mask'", "image_category = 'general'"),
                    ("image_origin = 'external'", "image_origin = 'internal'"),
                )
                await verify_catches(settings, conn, corruptions, "name = $1", two)
            finally:
                await conn.close()
        finally:
            app.close()


async def verify_catches(
    settings: Settings,
    conn: asyncpg.Connection,
    corruptions: Sequence[tuple[str, str]],
    where: str,
    *args: object,
) -> None:
    """Each ``(corruption, undo)`` of the images rows ``where`` selects: `ledger verify` fails
    on it, naming the images table, and passes again once it is undone."""
    for corruption, undo in corruptions:
        await conn.execute(f"UPDATE images SET {corruption} WHERE {where}", *args)
        result = run_verify(settings)
        assert result.returncode == 1, f"verify missed {corruption}"
        assert "images = replay" in result.stdout, result.stdout
        await conn.execute(f"UPDATE images SET {undo} WHERE {where}", *args)
    assert run_verify(settings).returncode == 0


async def _replay_jobs(app: Any, conn: asyncpg.Connection) -> None:
    """The jobs projection rebuilt as `pinksea projections rebuild jobs` does: its tables and
    versions emptied, every stored event of the jobs applied again."""
    projection = JobsProjection()
    await conn.execute(f"TRUNCATE {', '.join(projection.tables)}")
    await conn.execute("DELETE FROM projection_versions WHERE projection = $1", projection.name)
    for n in app.recorder.select_notifications(start=1, limit=100_000):
        env = envelope_for(app.mapper.to_domain_event(n), n.id)
        if projection.wants(env):
            async with conn.transaction():
                await apply_gated(conn, projection, env)

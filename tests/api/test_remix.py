"""POST /v1/images/{name}/remix on the real stack: a new job from the image's generation
metadata with a fresh seed (or the body's overrides), submitted as POST /v1/jobs submits it
(the same hold and Idempotency-Key rules), and another user's image a 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain.personal_data import PERSONAL_FIELDS
from tests.api.conftest import TINY, Kit, problem_type
from tests.api.test_images import _job_with_images
from tests.api.test_uploads import _png, _uploaded

pytestmark = pytest.mark.integration

ASKED: dict[str, Any] = {
    "prompt": "a pink sea at dawn",
    "negative_prompt": "fog",
    "steps": 6,
    "seed": 7,
    "guidance_scale": 4.0,
    "scheduler": "ddim",
}


async def _image(kit: Kit, user: str) -> tuple[str, str]:
    """A completed job submitted with ASKED, and its image's name."""
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.set_plan(user, "pro")
    r = await kit.client.post("/v1/jobs", json={**TINY, **ASKED}, headers=kit.auth(user))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    return job_id, await _completed(kit, user, job_id)


async def _completed(kit: Kit, user: str, job_id: str) -> str:
    """The job run to completion with one image, as a worker leaves it; the image's name."""
    name = f"{job_id}-0"
    image = {
        "name": name,
        "key": f"users/{user}/images/{name}.png",
        "thumbnail_key": f"users/{user}/thumbnails/{name}.webp",
        "size_bytes": 10,
        "width": 64,
        "height": 64,
    }
    kit.run_job(job_id, images=[image])  # type: ignore[list-item]
    await kit.project()
    return name


async def _job_view(kit: Kit, user: str, job_id: str) -> Any:
    r = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return r.json()


async def _remix(kit: Kit, user: str, name: str, body: Any = None, key: str | None = None) -> Any:
    headers = kit.auth(user) | ({"Idempotency-Key": key} if key else {})
    return await kit.client.post(f"/v1/images/{name}/remix", json=body, headers=headers)


async def test_a_remix_is_a_new_job_with_the_same_parameters_and_a_fresh_seed(
    kit: Kit, user: str
) -> None:
    job_id, name = await _image(kit, user)
    r = await _remix(kit, user, name)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "accepted" and accepted["hold_mc"] > 0
    assert (
        accepted["job_id"] != job_id and r.headers["Location"] == f"/v1/jobs/{accepted['job_id']}"
    )
    original = kit.app.job(uuid.UUID(job_id))
    remixed = kit.app.job(uuid.UUID(accepted["job_id"]))
    assert remixed.user_id == user
    # The prompts are stored sealed (each sealing its own): compared opened, below.
    apart = {"seed", *PERSONAL_FIELDS}
    assert {k: v for k, v in remixed.parameters.items() if k not in apart} == {
        k: v for k, v in original.parameters.items() if k not in apart
    }
    assert remixed.parameters["seed"] is None  # a fresh one, derived from the new job's id
    assert (original.seed, remixed.seed != original.seed) == (7, True)
    await kit.project()
    views = [await _job_view(kit, user, j) for j in (job_id, accepted["job_id"])]
    shown = ["model", "prompt", "negative_prompt", "steps", "width", "height", "batch_size"]
    shown += ["guidance_scale", "scheduler"]
    asked = {k: v for k, v in {**TINY, **ASKED, "batch_size": 1}.items() if k in shown}
    assert [{k: v[k] for k in shown} for v in views] == [asked, asked]


async def test_overrides_replace_the_images_parameters(kit: Kit, user: str) -> None:
    _, name = await _image(kit, user)
    r = await _remix(kit, user, name, {"seed": 7, "prompt": "a lighthouse", "steps": 3})
    assert r.status_code == 202, r.text
    await kit.project()
    view = await _job_view(kit, user, r.json()["job_id"])
    assert (view["seed"], view["prompt"], view["steps"]) == (7, "a lighthouse", 3)
    assert view["negative_prompt"] == "fog"  # not overridden: the image's
    for bad, problem in (
        ({"steps": 0}, "invalid-request"),
        ({"prompt": ""}, "invalid-request"),
        ({"seed": -1}, "invalid-request"),
        ({"model": "sd-1.5"}, "invalid-request"),  # not an override
        # Each field valid, the job they make not: the domain's own check (POST /v1/jobs's).
        ({"strength": 0.5}, "invalid-parameters"),  # no init image to repaint
        ({"width": 65}, "invalid-parameters"),  # tiny-sd makes multiples of 8
    ):
        r = await _remix(kit, user, name, bad)
        assert r.status_code == 422 and problem_type(r) == problem, (bad, r.text)


async def test_a_remix_honours_the_idempotency_key(kit: Kit, user: str) -> None:
    _, name = await _image(kit, user)
    first = await _remix(kit, user, name, key="remix-1")
    again = await _remix(kit, user, name, key="remix-1")
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["replayed"] is True
    other = await _remix(kit, user, name, {"steps": 2}, key="remix-1")
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict"
    # The key is the submission's: POST /v1/jobs with it answers the remixed job's key too.
    r = await kit.submit(user, key="remix-1")
    assert r.status_code == 409 and problem_type(r) == "idempotency-conflict"


async def test_another_users_image_or_none_is_a_404(kit: Kit, user: str, other: str) -> None:
    _, name = await _image(kit, user)
    await kit.client.get("/v1/me", headers=kit.auth(other))
    for who, image in ((other, name), (user, "nothing-here"), (user, f"{uuid.uuid4()}-0")):
        r = await _remix(kit, who, image)
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text
    r = await kit.client.get("/v1/jobs", headers=kit.auth(other))
    assert r.json()["items"] == []  # nothing was submitted for B


async def test_a_deleted_image_cannot_be_remixed(kit: Kit, user: str) -> None:
    _, images = await _job_with_images(kit, user, count=1)
    name = images[0]["name"]
    assert (
        await kit.client.delete(f"/v1/images/{name}", headers=kit.auth(user))
    ).status_code == 204
    await kit.project()
    r = await _remix(kit, user, name)
    assert r.status_code == 404 and problem_type(r) == "not-found"


async def test_the_recalled_strength_is_the_one_the_job_ran_with(kit: Kit, user: str) -> None:
    """Sent none, an inpainting job ran at 1.0 and an image-to-image job at 0.8: the metadata
    says so (a text-to-image job has none), and the stored parameters keep what was sent."""
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.set_plan(user, "pro")
    init, mask = await _uploaded(kit, user), await _uploaded(kit, user, _png(mode="L"))
    inputs = {"init_image": init["upload_id"]}
    kinds: list[tuple[dict[str, Any], float | None]] = [
        ({"model": "tiny-sd-inpaint", **inputs, "mask": mask["upload_id"]}, 1.0),
        (inputs, 0.8),
        ({"init_image": init["upload_id"], "strength": 0.5}, 0.5),
        ({}, None),
    ]
    names = []
    for body, strength in kinds:
        r = await kit.submit(user, **body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        name = await _completed(kit, user, job_id)
        r = await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["strength"] == strength, (body, r.json()["metadata"])
        assert kit.app.job(uuid.UUID(job_id)).parameters.get("strength") == body.get("strength")
        names.append(name)
    # A remix submits the metadata: the inpainting job again, at the strength it ran with.
    r = await _remix(kit, user, names[0])
    assert r.status_code == 202, r.text
    remixed = kit.app.job(uuid.UUID(r.json()["job_id"])).parameters
    assert (remixed["model"], remixed["strength"]) == ("tiny-sd-inpaint", 1.0), remixed

"""A job naming inputs it cannot use (domain/commands/job_inputs.py): one problem names every
input at fault, each as the request spells it, in its detail and its ``errors``; nothing of
the job is recorded."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.api import test_uploads as uploads_test
from tests.api import test_user_models as user_models_test
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


def _errors(r: httpx.Response) -> dict[str, tuple[str, str]]:
    """The problem's errors by where they are in the body: (type, msg)."""
    errors = r.json()["errors"]
    assert all(e["loc"][0] == "body" for e in errors), errors
    return {".".join(map(str, e["loc"][1:])): (e["type"], e["msg"]) for e in errors}


async def _jobs(kit: Kit, user: str) -> list[Any]:
    await kit.project()
    return list((await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"])


async def test_every_input_the_user_lacks_is_named_as_the_request_spells_it(
    kit: Kit, user: str, other: str
) -> None:
    await user_models_test._on_lora_plan(kit, user)
    foreign = await uploads_test._uploaded(kit, other)  # another user's upload
    missing_model = uuid.uuid4()
    body = {
        "model": "tiny-sd-inpaint",
        "init_image": foreign["upload_id"],
        "mask": f"{uuid.uuid4()}-0",  # no image of theirs
        "loras": [{"id": str(missing_model)}],
    }
    for path in ("/v1/jobs", "/v1/jobs/quote"):
        r = (
            await kit.submit(user, **body)
            if path == "/v1/jobs"
            else await kit.client.post(
                path, json={**uploads_test._tiny(), **body}, headers=kit.auth(user)
            )
        )
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text
        assert _errors(r) == {
            "init_image": ("not_found", f"you have no image or upload {foreign['upload_id']}"),
            "mask": ("not_found", f"you have no image or upload {body['mask']}"),
            "loras.0.id": ("not_found", f"you have no model {missing_model}"),
        }, r.json()
        detail = r.json()["detail"]
        assert detail.startswith("The job cannot use these inputs: init_image: "), detail
        assert "; mask: " in detail and "; loras[0].id: " in detail, detail
    assert await _jobs(kit, user) == []


async def test_inputs_that_are_the_users_but_unusable_are_a_422_naming_each(
    kit: Kit, user: str
) -> None:
    await user_models_test._on_lora_plan(kit, user)
    pending = await uploads_test._start(kit, user)
    model = await user_models_test._uploaded(kit, user)
    r = await kit.submit(
        user,
        init_image=pending["upload_id"],
        loras=[{"id": model["model_id"]}, {"id": model["model_id"], "sha256": "ab" * 32}],
    )
    assert r.status_code == 422 and problem_type(r) == "invalid-parameters", r.text
    errors = _errors(r)
    assert set(errors) == {"init_image", "loras.1.sha256"}, errors
    assert errors["init_image"][0] == "invalid_parameters" and "pending" in errors["init_image"][1]
    assert r.json()["detail"].startswith("The job cannot use these inputs: init_image: upload ")
    # One of them alone: the detail says "this input" and still names its field.
    r = await kit.submit(user, init_image=pending["upload_id"])
    assert r.status_code == 422 and list(_errors(r)) == ["init_image"], r.text
    assert r.json()["detail"].startswith("The job cannot use this input: init_image: ")
    assert await _jobs(kit, user) == []

"""Style presets on the real stack: `pinksea presets sync` uploads the repository's list to S3,
GET /v1/presets lists it, and a job naming a preset records the expanded prompts and its id."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from domain.parameters import MAX_PROMPT_CHARS
from domain.presets import PresetData, PresetList, StylePreset
from infra import style_presets
from tests.api.conftest import Kit, problem_type, process_env

pytestmark = pytest.mark.integration

SHIPPED = style_presets.read_file()


@pytest.fixture
def synced(kit: Kit) -> PresetList:
    """The shipped list in this session's bucket, by the CLI as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "cli", "presets", "sync"],
        env=process_env(kit.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(SHIPPED.presets)} style presets synced" in out.stdout
    kit.services.style_presets.forget()  # this process read the list before, maybe
    return SHIPPED


def _store(kit: Kit, *presets: StylePreset) -> None:
    style_presets.upload(kit.services.s3, kit.settings.s3_bucket, PresetList(presets=presets))
    kit.services.style_presets.forget()


async def _job(kit: Kit, user: str, job_id: str) -> dict[str, Any]:
    await kit.project()
    r = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_synced_presets_are_listed_page_by_page(
    kit: Kit, user: str, synced: PresetList
) -> None:
    stored = kit.services.s3.get_object(Bucket=kit.settings.s3_bucket, Key=style_presets.INDEX_KEY)
    assert len(json.loads(stored["Body"].read())["presets"]) == len(synced.presets)
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(len(synced.presets)):  # bounded: at most one page per preset
        params: dict[str, str | int] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        r = await kit.client.get("/v1/presets", params=params, headers=kit.auth(user))
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [p["id"] for p in seen] == sorted(synced.ids)
    general = next(p for p in seen if p["id"] == "photography-general")
    assert general == {
        "id": "photography-general",
        "name": "Photography (General)",
        "type": "default",
        "preset_data": {
            "positive_prompt": "{prompt}. photography. f/2.8 macro photo, bokeh, photorealism",
            "negative_prompt": "painting, digital art. sketch, blurry",
        },
    }
    one = await kit.client.get("/v1/presets/photography-general", headers=kit.auth(user))
    assert one.status_code == 200 and one.json() == general


async def test_a_job_with_a_preset_records_the_expanded_prompts_and_the_id(
    kit: Kit, user: str, synced: PresetList
) -> None:
    r = await kit.submit(user, prompt="a lighthouse", style_preset="photography-general")
    assert r.status_code == 202, r.text
    job = await _job(kit, user, r.json()["job_id"])
    assert job["prompt"] == "a lighthouse. photography. f/2.8 macro photo, bokeh, photorealism"
    # The user sent no negative prompt and the template has no {prompt}: the template alone.
    assert job["negative_prompt"] == "painting, digital art. sketch, blurry"
    assert job["style_preset"] == "photography-general"
    assert kit.app.job(r.json()["job_id"]).parameters["style_preset"] == "photography-general"
    # Without a preset nothing is recorded for it: old jobs' parameters (and fingerprints) hold.
    plain = await kit.submit(user, prompt="a lighthouse")
    assert "style_preset" not in kit.app.job(plain.json()["job_id"]).parameters
    assert (await _job(kit, user, plain.json()["job_id"]))["style_preset"] is None


async def test_the_same_key_and_preset_replays_the_job(
    kit: Kit, user: str, synced: PresetList
) -> None:
    first = await kit.submit(user, key="preset-k", style_preset="anime")
    again = await kit.submit(user, key="preset-k", style_preset="anime")
    assert first.status_code == 202 and again.status_code == 202, again.text
    assert again.json()["job_id"] == first.json()["job_id"] and again.json()["replayed"]


async def test_an_unknown_preset_is_422_naming_the_valid_ids(
    kit: Kit, user: str, synced: PresetList
) -> None:
    for path in ("/v1/jobs", "/v1/jobs/quote"):
        r = await kit.client.post(
            path,
            json={"model": "tiny-sd", "prompt": "x", "steps": 4, "width": 64, "height": 64,
                  "style_preset": "no-such-style"},
            headers=kit.auth(user),
        )  # fmt: skip
        assert r.status_code == 422, r.text
        assert problem_type(r) == "invalid-parameters"
        detail = r.json()["detail"]
        assert "'no-such-style' is unknown" in detail and "photography-general" in detail
    missing = await kit.client.get("/v1/presets/no-such-style", headers=kit.auth(user))
    assert missing.status_code == 404 and problem_type(missing) == "not-found"


async def test_a_prompt_too_long_once_expanded_is_422(kit: Kit, user: str) -> None:
    template = "{prompt}, " + "x" * 100
    _store(kit, StylePreset(id="long", name="Long", preset_data=PresetData(
        positive_prompt=template, negative_prompt="")))  # fmt: skip
    try:
        fits = "p" * (MAX_PROMPT_CHARS - len(template) + len("{prompt}"))
        ok = await kit.client.post(
            "/v1/jobs/quote",
            json={"model": "tiny-sd", "prompt": fits, "steps": 4, "width": 64, "height": 64,
                  "style_preset": "long"},
            headers=kit.auth(user),
        )  # fmt: skip
        assert ok.status_code == 200, ok.text
        r = await kit.submit(user, prompt=fits + "p", style_preset="long")
        assert r.status_code == 422 and problem_type(r) == "invalid-parameters"
        assert f"prompt is {MAX_PROMPT_CHARS + 1} characters" in r.json()["detail"].lower()
        assert "shorten it by 1" in r.json()["detail"]
    finally:
        style_presets.upload(kit.services.s3, kit.settings.s3_bucket, SHIPPED)
        kit.services.style_presets.forget()


async def test_before_any_sync_the_list_is_empty_and_a_preset_is_unknown(
    kit: Kit, user: str
) -> None:
    kit.services.s3.delete_object(Bucket=kit.settings.s3_bucket, Key=style_presets.INDEX_KEY)
    kit.services.style_presets.forget()
    try:
        r = await kit.client.get("/v1/presets", headers=kit.auth(user))
        assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
        job = await kit.submit(user, style_preset="anime")
        assert job.status_code == 422 and "none are installed" in job.json()["detail"]
    finally:
        style_presets.upload(kit.services.s3, kit.settings.s3_bucket, SHIPPED)
        kit.services.style_presets.forget()


async def test_a_cursor_of_another_list_is_422(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/presets", params={"cursor": "bm9wZQ"}, headers=kit.auth(user))
    assert r.status_code == 422 and problem_type(r) == "invalid-request"

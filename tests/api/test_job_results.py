"""A job's view and stream carry what an integrator needs in one call (issue 19, parts 4
and 5): a queued job's place and ETA with its basis, a completed job's fresh image URLs, and
a stream token for a browser's EventSource, limited to one job and a few minutes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.jobs import ImageRecord
from read_models.queue import ServiceTimes, estimate
from tests.api.conftest import Kit, problem_type
from tests.api.test_sse import _read_events, _wait_for

pytestmark = pytest.mark.integration


def _image(user: str, job_id: str, index: int) -> ImageRecord:
    return {
        "name": f"{job_id}-{index}",
        "key": f"users/{user}/images/{job_id}-{index}.png",
        "thumbnail_key": f"users/{user}/thumbnails/{job_id}-{index}.webp",
        "size_bytes": 100,
        "width": 64,
        "height": 64,
    }


async def _job(kit: Kit, user: str, job_id: str) -> dict[str, Any]:
    r = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_queued_job_shows_its_place_and_eta_and_moves_up(kit: Kit, user: str) -> None:
    # One measured run of the tier: started 3 s before it finished.
    measured = (await kit.submit(user, key="measured")).json()["job_id"]
    at = datetime.now(UTC)
    job = uuid.UUID(measured)
    kit.app.record_dispatch(job, attempt=1, worker_id="w-eta", at=at - timedelta(seconds=3))
    kit.app.record_start(job, attempt=1, worker_id="w-eta", gpu="T4", at=at - timedelta(seconds=3))
    kit.app.complete_job(job, attempt=1, gpu_ms=3000, cuda_ms=2990, images=[], at=at)
    first = (await kit.submit(user, key="first")).json()["job_id"]
    second = (await kit.submit(user, key="second")).json()["job_id"]
    await kit.project()

    a, b = (await _job(kit, user, first))["queue"], (await _job(kit, user, second))["queue"]
    assert a is not None and b is not None
    assert b["position"] == a["position"] + 1 and b["basis"]["jobs_ahead"] == b["position"] - 1
    basis = b["basis"]
    assert basis["tier"] == "basic" and basis["sampled_jobs"] >= 1
    assert basis["mean_run_ms"] is not None and 0 <= basis["mean_run_ms"] <= 3000
    assert basis["workers"] is not None and basis["workers"] >= 1  # w-eta finished just now
    assert b["done_in_ms"] == b["start_in_ms"] + basis["mean_run_ms"]
    assert b["start_in_ms"] >= a["start_in_ms"]

    # The first one is dispatched: the second moves up, one more job is in service.
    kit.app.record_dispatch(uuid.UUID(first), attempt=1, worker_id="w-1", at=datetime.now(UTC))
    await kit.project()
    assert (await _job(kit, user, first))["queue"] is None  # not queued any more
    moved = (await _job(kit, user, second))["queue"]
    assert moved["position"] == b["position"] - 1
    assert moved["basis"]["in_service"] == b["basis"]["in_service"] + 1


@given(
    ahead=st.integers(0, 1000),
    in_service=st.integers(0, 100),
    mean_run_ms=st.integers(0, 10**7),
    workers=st.one_of(st.none(), st.integers(1, 64)),
)
def test_the_eta_grows_with_the_queue_and_shrinks_with_workers(
    ahead: int, in_service: int, mean_run_ms: int, workers: int | None
) -> None:
    service = ServiceTimes("basic", 10, mean_run_ms, workers)
    times = estimate(ahead, in_service, service)
    assert times is not None
    start, done = times
    assert start >= 0 and done == start + mean_run_ms
    assert estimate(ahead + 1, in_service, service)[0] >= start  # type: ignore[index]
    more = ServiceTimes("basic", 10, mean_run_ms, (workers or 1) + 1)
    assert estimate(ahead, in_service, more)[0] <= start  # type: ignore[index]
    if ahead + in_service < (workers or 1):
        assert start == 0  # a free worker takes it at once
    assert estimate(ahead, in_service, ServiceTimes("basic", 0, None, None)) is None


async def test_a_completed_job_carries_fresh_image_urls(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user, key="done")).json()["job_id"]
    kit.run_job(job_id, images=[_image(user, job_id, 0), _image(user, job_id, 1)])
    await kit.project()
    first = await _job(kit, user, job_id)
    assert first["status"] == "completed" and first["queue"] is None
    assert [i["name"] for i in first["images"]] == [f"{job_id}-0", f"{job_id}-1"]
    for image in first["images"]:
        assert image["url"] and image["thumbnail_url"] and image["urls_expire_at"]
        assert f"{image['name']}.png" in image["url"]
        assert f"{image['name']}.webp" in image["thumbnail_url"]
    # Read again (now from the cache of finished jobs): signed again, never the cached URLs.
    await asyncio.sleep(1.1)  # presigned URLs carry their signing second
    again = await _job(kit, user, job_id)
    assert again["images"][0]["url"] != first["images"][0]["url"]
    assert again["images"][0]["urls_expire_at"] > first["images"][0]["urls_expire_at"]
    # The list stays light: no signatures.
    listed = (await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"]
    assert listed[0]["job_id"] == job_id
    assert all(i["url"] is None for i in listed[0]["images"])


async def test_a_stream_token_opens_its_jobs_stream_only(
    kit: Kit, user: str, other: str, api_pair: tuple[str, str]
) -> None:
    a, _ = api_pair
    job_id = (await kit.submit(user, key="browser")).json()["job_id"]
    other_job = (await kit.submit(user, key="not-this-one")).json()["job_id"]
    await kit.project()
    r = await kit.client.post(f"/v1/jobs/{job_id}/stream-token", headers=kit.auth(user))
    assert r.status_code == 201, r.text
    grant = r.json()
    token = grant["token"]
    expires_at = datetime.fromisoformat(grant["expires_at"])
    assert timedelta(minutes=1) < expires_at - datetime.now(UTC) <= timedelta(minutes=5)
    assert grant["url"] == f"/v1/jobs/{job_id}/events?access_token={token}"
    # Another user cannot get one for this job.
    stolen = await kit.client.post(f"/v1/jobs/{job_id}/stream-token", headers=kit.auth(other))
    assert stolen.status_code == 404 and problem_type(stolen) == "not-found"

    async with httpx.AsyncClient(timeout=30) as http:
        # No header at all, as EventSource sends it: the queued job's place comes first.
        events: list[tuple[str, Any]] = []
        async with http.stream("GET", f"{a}{grant['url']}") as stream:
            assert stream.status_code == 200
            reader = asyncio.create_task(_read_events(stream, events))
            await _wait_for(events, lambda e: e[0] == "queue" and e[1]["queue"] is not None)
            kit.run_job(job_id, images=[_image(user, job_id, 0)])
            await kit.project()
            await asyncio.wait_for(reader, 15)
        completed = next(e[1] for e in events if e[0] == "status" and e[1]["status"] == "completed")
        assert completed["images"][0]["name"] == f"{job_id}-0"
        assert completed["images"][0]["url"] and completed["images"][0]["thumbnail_url"]

        # The token opens nothing else: another job's stream, or any other route.
        elsewhere = await http.get(f"{a}/v1/jobs/{other_job}/events?access_token={token}")
        assert elsewhere.status_code == 401 and problem_type(elsewhere) == "unauthorized"
        me = await http.get(f"{a}/v1/me?access_token={token}")
        assert me.status_code == 401
        view = await http.get(f"{a}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
        assert view.status_code == 401
        # Tampered with: refused.
        payload, _, mac = token.partition(".")
        forged = f"{payload}.{mac[::-1]}"
        r = await http.get(f"{a}/v1/jobs/{job_id}/events?access_token={forged}")
        assert r.status_code == 401 and "signature" in r.json()["detail"]

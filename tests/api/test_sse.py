"""Live job events across API processes: a client streams from process A while the job is
submitted through process B, reports arrive as they would from the scheduler, a worker and the
settler (commands on the event store, then the projections), and per-step progress comes over
Redis exactly as a GPU worker publishes it."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from infra import redis_keys
from tests.api.conftest import TINY, Kit

pytestmark = pytest.mark.integration


async def _read_events(response: httpx.Response, into: list[tuple[str, Any]]) -> None:
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event:
            into.append((event, json.loads(line.removeprefix("data: "))))
            if event == "end":
                return


async def _wait_for(events: list[tuple[str, Any]], predicate: Any, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(predicate(e) for e in events):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not seen in time; got {events}")
        await asyncio.sleep(0.02)


async def test_progress_reaches_a_client_on_another_process(
    kit: Kit, user: str, api_pair: tuple[str, str]
) -> None:
    a, b = api_pair
    headers = kit.auth(user)
    prefix = kit.settings.redis_key_prefix
    publisher = redis.from_url(kit.settings.redis_url)
    async with httpx.AsyncClient(timeout=30) as http:
        submitted = await http.post(
            f"{b}/v1/jobs", json=TINY, headers={**headers, "Idempotency-Key": "sse"}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await kit.project()

        events: list[tuple[str, Any]] = []
        async with http.stream("GET", f"{a}/v1/jobs/{job_id}/events", headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(_read_events(r, events))
            await _wait_for(
                events, lambda e: e == ("status", e[1]) and e[1]["status"] == "accepted"
            )

            kit.run_job(job_id, complete=False)  # dispatched, then running on a worker
            await kit.project()
            await _wait_for(events, lambda e: e[0] == "status" and e[1]["status"] == "running")

            channel = redis_keys.progress_channel(prefix, job_id)
            for step in range(1, 5):
                message = {
                    "job_id": job_id,
                    "attempt": 1,
                    "step": step,
                    "total_steps": 4,
                    "at": datetime.now(UTC).isoformat(),
                }
                await publisher.publish(channel, json.dumps(message))
                # Process B keeps serving meanwhile.
                assert (await http.get(f"{b}/v1/me", headers=headers)).status_code == 200
            await _wait_for(events, lambda e: e[0] == "progress" and e[1]["step"] == 4)

            kit.app.complete_job(
                uuid.UUID(job_id),
                attempt=1,
                gpu_ms=400,
                cuda_ms=390,
                images=[],
                at=datetime.now(UTC),
            )
            await kit.project()
            await asyncio.wait_for(reader, 15)

    await publisher.aclose()
    statuses = [e[1]["status"] for e in events if e[0] == "status"]
    assert statuses[0] == "accepted" and statuses[-1] == "completed"
    assert "running" in statuses
    assert statuses.index("running") < statuses.index("completed")
    steps = [e[1]["step"] for e in events if e[0] == "progress"]
    assert steps == [1, 2, 3, 4]
    assert events[-1] == ("end", {"job_id": job_id, "status": "completed"})
    completed = next(e[1] for e in events if e[0] == "status" and e[1]["status"] == "completed")
    assert completed["charged_mc"] == 400


async def test_stream_of_a_finished_job_ends_at_once(
    kit: Kit, user: str, api_pair: tuple[str, str]
) -> None:
    a, _ = api_pair
    job_id = (await kit.submit(user)).json()["job_id"]
    await kit.client.post(f"/v1/jobs/{job_id}/cancel", headers=kit.auth(user))
    await kit.project()
    events: list[tuple[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=15) as http,
        http.stream("GET", f"{a}/v1/jobs/{job_id}/events", headers=kit.auth(user)) as r,
    ):
        await asyncio.wait_for(_read_events(r, events), 10)
    assert [e[0] for e in events] == ["status", "end"]
    assert events[0][1]["status"] == "cancelled"

    # A reconnecting EventSource sends the last id it handled: what it saw is not sent again.
    position = events[0][1]["position"]
    for last_id, kinds in ((position, ["end"]), (position - 1, ["status", "end"])):
        resumed: list[tuple[str, Any]] = []
        headers = {**kit.auth(user), "Last-Event-ID": str(last_id)}
        async with (
            httpx.AsyncClient(timeout=15) as http,
            http.stream("GET", f"{a}/v1/jobs/{job_id}/events", headers=headers) as r,
        ):
            await asyncio.wait_for(_read_events(r, resumed), 10)
        assert [e[0] for e in resumed] == kinds, (last_id, resumed)
    headers = {**kit.auth(user), "Last-Event-ID": "not-a-position"}
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.get(f"{a}/v1/jobs/{job_id}/events", headers=headers)
    assert r.status_code == 422


async def test_late_subscribers_get_the_last_progress(
    kit: Kit, user: str, api_pair: tuple[str, str]
) -> None:
    a, _ = api_pair
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id, complete=False)
    await kit.project()
    last = {"job_id": job_id, "attempt": 1, "step": 7, "total_steps": 9, "at": "now"}
    await kit.services.redis.set(
        redis_keys.last_progress(kit.settings.redis_key_prefix, job_id), json.dumps(last)
    )
    events: list[tuple[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=15) as http,
        http.stream("GET", f"{a}/v1/jobs/{job_id}/events", headers=kit.auth(user)) as r,
    ):
        reader = asyncio.create_task(_read_events(r, events))
        await _wait_for(events, lambda e: e[0] == "progress" and e[1]["step"] == 7)
        await _wait_for(events, lambda e: e[0] == "status")
        reader.cancel()

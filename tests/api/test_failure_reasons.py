"""A failed job tells its owner what happened, not how the platform is built (issue 17).

A failure reason is the worker's exception text: file paths, stack traces, S3 endpoints,
host names. Its owner reads one of a fixed set of sentences per kind of failure, or, for a
failure of their own making, the message scrubbed (api/failures.py), in the job's view, its
live status events and their ledger; operators keep the whole text (the read model, the
admin's ledger view).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.failures import (
    BUDGET,
    PLATFORM,
    PLATFORM_MESSAGES,
    STORAGE,
    USER,
    gave_up,
    public_failure_reason,
    public_ledger_description,
    scrub,
)
from domain.job_lifecycle import Fault
from tests.api.conftest import Kit

# As the GPU workers, the settler and the domain write them (gpu_consumer/run.py, worker.py).
PLATFORM_REASONS = [
    "OSError: [Errno 28] No space left on device: '/tmp/pinksea-models/sdxl/unet/"
    "diffusion_pytorch_model.safetensors'",
    "storage_unavailable: S3 put of users/u-1/images/x.png failed: Could not connect to the "
    'endpoint URL: "https://pinksea-images.s3.ap-northeast-2.amazonaws.com/users/u-1"',
    "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total)",
    "worker error: RuntimeError('boom at 0x7f3a2b1c4d50')",
    "ModelUnavailable: /models/sdxl-base-1.0 is missing and s3://pinksea-models/models/sdxl "
    "is unreachable from ip-10-0-11-23.ap-northeast-2.compute.internal",
    "RuntimeError: CUDA error: device-side assert triggered\nTraceback (most recent call "
    'last):\n  File "/app/gpu_consumer/run.py", line 212, in run\n    images = pipe(...)',
    "ConnectionError: Error 111 connecting to redis.internal:6379. Connection refused.",
    "stale dispatch: sent 901 s ago",
    "the worker stopped during the run",
    "gave up after 3 attempts",
]
USER_REASONS = [
    "ValueError: `height` has to be divisible by 8 but are 65 and 64 "
    "(/opt/venv/lib/python3.11/site-packages/diffusers/pipelines/sd.py:612)",
    "InvalidJob: width 2048 exceeds 1024 for sd-1.5 on gpu-3.internal",
    "UnknownModel: no model 'foo' in /models/registry.json",
]
LEAKS = [
    re.compile(r"/[\w.-]+/"),  # a path
    re.compile(r"Traceback|File \""),
    re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    re.compile(r"\.internal\b|amazonaws\.com|\bip-\d+-\d+"),
    re.compile(r"0x[0-9a-f]{6,}"),
    re.compile(r":\d{4,5}\b"),
    re.compile(r"\b[A-Za-z]\w*(?:Error|Job|Model|Unavailable): "),
]


def leaks(text: str) -> list[str]:
    return [p.pattern for p in LEAKS if p.search(text)]


@pytest.mark.parametrize("reason", PLATFORM_REASONS)
def test_a_platform_failure_reads_as_one_of_a_fixed_set_of_sentences(reason: str) -> None:
    public = public_failure_reason(reason, "platform")
    assert public in PLATFORM_MESSAGES or public == gave_up(3)
    assert public is not None and not leaks(public)
    assert public_failure_reason(public, "platform") == public  # a view read back stays


@pytest.mark.parametrize("reason", USER_REASONS)
def test_a_user_failure_keeps_what_to_fix_without_internals(reason: str) -> None:
    public = public_failure_reason(reason, "user")
    assert public is not None and public.startswith(USER)
    assert not leaks(public), public
    assert public_failure_reason(public, "user") == public


def test_scrub_keeps_what_a_user_can_act_on() -> None:
    assert scrub("ValueError: height must be divisible by 8 but is 65") == (
        "height must be divisible by 8 but is 65"
    )
    assert scrub("InvalidJob: 65/8 is not a whole number; sd1.5 v2.1.0") == (
        "65/8 is not a whole number; sd1.5 v2.1.0"
    )
    assert scrub("x" * 500).endswith("…") and len(scrub("x" * 500)) == 200
    assert public_failure_reason(None, None) is None
    assert public_failure_reason(PLATFORM_REASONS[1], "platform") == STORAGE
    assert public_failure_reason("stopped at the hold's time budget", "user") == BUDGET


def test_ledger_lines_name_a_platform_failure_without_its_text() -> None:
    raw = (
        "Job 3f2a: hold of 1.500 credits released (platform failure: OSError: (28) "
        "'/tmp/x/y'), 0.200 expired with their lot"
    )
    assert public_ledger_description(raw) == (
        "Job 3f2a: hold of 1.500 credits released (platform failure), 0.200 expired with their lot"
    )
    other = "Job 3f2a: hold of 1.500 credits released (cancelled before start)"
    assert public_ledger_description(other) == other


# --------------------------------------------------------------------------- the API

RAW = PLATFORM_REASONS[4]


async def failed_job(kit: Kit, user: str, reason: str, fault: Fault) -> str:
    r = await kit.submit(user)
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["job_id"])
    kit.run_job(job_id, complete=False)
    kit.app.fail_job(
        job_id,
        attempt=1,
        reason=reason,
        retryable=False,
        fault=fault,
        gpu_ms=120,
        at=datetime.now(UTC),
    )
    await kit.project()
    return str(job_id)


@pytest.mark.integration
async def test_the_owner_reads_the_public_reason_operators_the_whole_one(
    kit: Kit, user: str
) -> None:
    job_id = await failed_job(kit, user, RAW, Fault.PLATFORM)
    for _ in range(2):  # the second answer comes from the finished-job cache
        r = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
        assert r.status_code == 200, r.text
        assert r.json()["failure_reason"] == PLATFORM and r.json()["failure_fault"] == "platform"
    listed = (await kit.client.get("/v1/jobs", headers=kit.auth(user))).json()["items"]
    assert [j["failure_reason"] for j in listed if j["job_id"] == job_id] == [PLATFORM]
    # Operators: the read model (and the event store) keep the worker's text.
    stored = await kit.services.pool.fetchval(
        "SELECT failure_reason FROM jobs WHERE job_id = $1", uuid.UUID(job_id)
    )
    assert stored == RAW

    user_job = await failed_job(kit, user, USER_REASONS[0], Fault.USER)
    r = await kit.client.get(f"/v1/jobs/{user_job}", headers=kit.auth(user))
    assert r.json()["failure_reason"].startswith(USER + ": `height` has to be divisible by 8")
    assert not leaks(r.json()["failure_reason"])


@pytest.mark.integration
async def test_the_ledger_names_the_failure_only_for_admins(kit: Kit, user: str) -> None:
    job_id = await failed_job(kit, user, PLATFORM_REASONS[1], Fault.PLATFORM)

    async def release_line(headers: dict[str, str], path: str) -> str:
        r = await kit.client.get(path, headers=headers)
        assert r.status_code == 200, r.text
        lines = [
            i for i in r.json()["items"] if i["job_id"] == job_id and "released" in i["description"]
        ]
        assert len(lines) == 1, r.json()["items"]
        return str(lines[0]["description"])

    mine = await release_line(kit.auth(user), "/v1/me/ledger")
    assert mine.endswith("released (platform failure)") and not leaks(mine), mine
    admins = await release_line(kit.auth("root", admin=True), f"/v1/admin/users/{user}/ledger")
    assert "platform failure: storage_unavailable: S3 put of users/u-1" in admins


@pytest.mark.integration
async def test_live_status_events_carry_the_public_reason(
    kit: Kit, user: str, api_pair: tuple[str, str]
) -> None:
    a, _ = api_pair
    job_id = await failed_job(kit, user, RAW, Fault.PLATFORM)
    events: list[tuple[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=15) as http,
        http.stream("GET", f"{a}/v1/jobs/{job_id}/events", headers=kit.auth(user)) as r,
    ):
        assert r.status_code == 200

        async def read() -> None:
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event:
                    events.append((event, json.loads(line.removeprefix("data: "))))
                    if event == "end":
                        return

        await asyncio.wait_for(read(), 10)
    status = next(data for kind, data in events if kind == "status")
    assert status["status"] == "failed"
    assert status["failure_reason"] == PLATFORM and not leaks(json.dumps(status))

"""Live event streams per user are bounded (issue 17): each holds a Redis connection for up
to an hour, so a user may hold only their plan's number at once (api/live.py); one more is a
429 ``stream-limit`` with Retry-After. The bound is shared by every API process (Redis), a
stream gives its slot back when it ends, and the slots of a process that dies lapse on their
own: real ``pinksea api`` processes, one of them killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from api.live import STREAMS_PER_PLAN, streams_allowed
from tests.api.conftest import Kit, api_subprocess, problem_type

pytestmark = pytest.mark.integration

SLOT_TTL_S = 4.0  # renewed every 1.3 s: a killed process's slots lapse within 4 s


@contextlib.asynccontextmanager
async def streams(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], n: int
) -> AsyncIterator[list[httpx.Response]]:
    """``n`` event streams open at once (each answered 200 and left open)."""
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for _ in range(n):
            r = await stack.enter_async_context(http.stream("GET", url, headers=headers))
            assert r.status_code == 200, (await r.aread()).decode()
            opened.append(r)
        yield opened


async def refused(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """The answer to one more stream (its body read only when it is not a stream)."""
    async with http.stream("GET", url, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
        return r


async def open_within(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], timeout: float
) -> float:
    """Seconds until a stream opens again (retrying while refused)."""
    started = time.monotonic()
    while True:
        async with http.stream("GET", url, headers=headers) as r:
            if r.status_code == 200:
                return time.monotonic() - started
            assert r.status_code == 429, r.status_code
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no slot free after {timeout} s")
        await asyncio.sleep(0.2)


async def unfinished_job(kit: Kit, user: str) -> str:
    r = await kit.submit(user)
    assert r.status_code == 202, r.text
    await kit.project()
    return str(r.json()["job_id"])


def test_every_plan_has_a_bound() -> None:
    from domain.plans import PLANS

    assert set(STREAMS_PER_PLAN) == set(PLANS)
    for slug, plan in PLANS.items():
        assert streams_allowed(slug) >= plan.concurrent_jobs + 1, slug
    assert streams_allowed("a-plan-from-the-future") == min(STREAMS_PER_PLAN.values())


async def test_one_stream_too_many_is_a_429_and_a_closed_one_frees_its_slot(
    kit: Kit, user: str, other: str, api_pair: tuple[str, str]
) -> None:
    a, b = api_pair
    job = await unfinished_job(kit, user)
    mine, theirs = kit.auth(user), kit.auth(other)
    other_job = await unfinished_job(kit, other)
    bound = streams_allowed("trial")
    path = f"/v1/jobs/{job}/events"
    async with httpx.AsyncClient(timeout=30) as http:
        async with streams(http, a + path, mine, bound - 1), streams(http, b + path, mine, 1):
            # The bound is the user's, across processes: the slots are in Redis.
            for url in (a, b):
                r = await refused(http, url + path, mine)
                assert r.status_code == 429 and problem_type(r) == "stream-limit"
                body = r.json()
                assert body["limit"] == bound and "close one" in body["detail"]
                assert int(r.headers["retry-after"]) >= 1
            # Someone else's streams are theirs.
            async with streams(http, f"{a}/v1/jobs/{other_job}/events", theirs, 1):
                pass
        # Every stream closed: the slots come back as the streams notice (a heartbeat, 1 s).
        await open_within(http, a + path, mine, timeout=10)
        async with streams(http, a + path, mine, bound):
            pass


async def test_the_slots_of_a_killed_process_lapse_and_live_ones_are_renewed(
    kit: Kit, user: str
) -> None:
    env = {"PINKSEA_SSE_SLOT_TTL_S": str(SLOT_TTL_S)}
    job = await unfinished_job(kit, user)
    headers, path = kit.auth(user), f"/v1/jobs/{job}/events"
    bound = streams_allowed("trial")
    with (
        api_subprocess(kit.settings, **env) as (doomed, doomed_proc),
        api_subprocess(kit.settings, **env) as (survivor, _),
    ):
        async with (
            httpx.AsyncClient(timeout=30) as http,
            streams(http, doomed + path, headers, bound),
        ):
            # Longer than a slot's TTL: the open streams renew theirs.
            await asyncio.sleep(SLOT_TTL_S * 1.5)
            assert (await refused(http, survivor + path, headers)).status_code == 429
            doomed_proc.kill()  # no finally, no release: only the TTL frees these slots
            doomed_proc.wait()
            assert (await refused(http, survivor + path, headers)).status_code == 429
            waited = await open_within(http, survivor + path, headers, timeout=SLOT_TTL_S * 3)
            assert waited <= SLOT_TTL_S + 2

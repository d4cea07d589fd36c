"""A network partition between the API and PostgreSQL (issue 17, part 4): a private PostgreSQL
inside a network namespace (tests/faults/netns.py), the API in-process outside it, and the
namespace's link taken down, so that every packet between them is dropped: no refusal, no
reset, connections that stay open and go silent.

What must hold: while the partition lasts, a submission and a read are answered 503
problem+json with Retry-After within the connection bounds (infra/db.py), never 500 and never
a hang (before the bounds, the first request waited for the kernel's TCP retransmission
timeout, about 15 minutes); once it heals the same client's retry (same Idempotency-Key) and
new submissions are accepted without restarting anything; and nothing is half-written: the
jobs that exist are exactly those answered 202, and ``ledger verify`` passes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.api.project_now import project_now
from tests.faults.conftest import (
    JOB,
    accepted_job_ids,
    assert_unavailable,
    auth,
    fault_settings,
    in_process_api,
    ledger_verify,
)
from tests.faults.netns import network_namespace
from tests.faults.private_pg import private_postgres, require_root_and_postgres, tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
DISK_MIB = 64
BOUNDS_S = 2.0  # every connection bound of the API under test (the defaults are 5-30 s)
PARTITIONED_REQUESTS = 3  # submissions during the partition, each answered 503
RECOVERY_S = 90  # how long the service may take to accept again once the partition heals


async def test_partition_from_postgres_is_503_then_heals_with_nothing_half_written(
    tmp_path: Path,
) -> None:
    binaries = require_root_and_postgres()
    with (
        network_namespace() as ns,
        tmpfs(DISK_MIB) as disk,
        private_postgres(binaries, disk / "data", host=ns.inner_address, wrap=ns.exec_prefix) as pg,
    ):
        settings = fault_settings(
            pg.url("pinksea"),
            tmp_path,
            db_connect_timeout_s=BOUNDS_S,
            db_tcp_user_timeout_s=BOUNDS_S,
            db_pool_timeout_s=BOUNDS_S,
            db_command_timeout_s=2 * BOUNDS_S,
        )
        user = f"u-{uuid.uuid4().hex[:12]}"
        accepted: list[str] = []
        async with in_process_api(settings) as (app, client):

            async def submit(key: str) -> httpx.Response:
                return await client.post(
                    "/v1/jobs", json=JOB, headers=auth(settings, user, **{"Idempotency-Key": key})
                )

            async def cancel_first(_: str) -> httpx.Response:
                return await client.post(
                    f"/v1/jobs/{accepted[0]}/cancel", headers=auth(settings, user)
                )

            first = await submit("before")
            assert first.status_code == 202, first.text
            accepted.append(first.json()["job_id"])
            listed = await client.get("/v1/jobs", headers=auth(settings, user))
            assert listed.status_code == 200, listed.text

            ns.partition()
            try:
                # A cancel goes straight to the event store (psycopg), a submission first reads
                # the learned GPU rates (asyncpg): both clients' bounds are tried.
                took_s: list[float] = []  # reported, not asserted
                began = time.monotonic()
                cancel = await cancel_first("")
                took_s.append(time.monotonic() - began)
                assert cancel.status_code != 500, cancel.text
                assert_unavailable(cancel)
                answers: list[int] = []
                for n in range(PARTITIONED_REQUESTS):
                    began = time.monotonic()
                    during = await submit(f"during-{n}")
                    took_s.append(time.monotonic() - began)
                    answers.append(during.status_code)
                    assert during.status_code != 500, during.text
                    assert_unavailable(during)
                began = time.monotonic()
                read = await client.get("/v1/jobs", headers=auth(settings, user))
                took_s.append(time.monotonic() - began)
                assert read.status_code != 500, read.text
                assert_unavailable(read)
            finally:
                ns.heal()

            cancelled = await until_accepted(cancel_first, "", pg.log_tail)
            assert cancelled.json()["status"] == "cancelled", cancelled.text
            # The client retries the refused submissions with their keys, as a client would:
            # each is accepted once the pools have reconnected (or was stored after all, and
            # its retry answers the same job).
            for n in range(PARTITIONED_REQUESTS):
                retried = await until_accepted(submit, f"during-{n}", pg.log_tail)
                accepted.append(retried.json()["job_id"])
            after = await until_accepted(submit, "after", pg.log_tail)
            accepted.append(after.json()["job_id"])
            again = await client.get("/v1/jobs", headers=auth(settings, user))
            assert again.status_code == 200, again.text
            await project_now(app.state.services.application, settings.database_url, start=1)

        # Nothing half-written: the jobs are exactly the accepted ones (one per key), and the
        # ledger's invariants hold on a replay of every event.
        assert len(set(accepted)) == len(accepted) == PARTITIONED_REQUESTS + 2, accepted
        assert accepted_job_ids(settings.database_url, user) == set(accepted)
        verify = ledger_verify(pg.url("pinksea"))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        print(
            f"partition: a cancel, {len(answers)} submissions and a read during it answered "
            f"{cancel.status_code}, "
            f"{sorted(set(answers))} and {read.status_code}; after it healed every retry and "
            f"a new submission were accepted; ledger verify passed; the answers during it "
            f"took {', '.join(f'{t:.1f}' for t in took_s)} s (bounds {BOUNDS_S} s)"
        )


async def until_accepted(
    send: Callable[[str], Awaitable[httpx.Response]], key: str, log_tail: Callable[[], str]
) -> httpx.Response:
    """Send ``key``'s request again (503 and a pause in between) until it is accepted."""
    deadline = time.monotonic() + RECOVERY_S
    while True:
        answer = await send(key)
        assert answer.status_code != 500, answer.text
        if answer.status_code == 202:
            return answer
        assert_unavailable(answer)
        assert time.monotonic() < deadline, (
            f"{key!r} not accepted {RECOVERY_S} s after the partition healed: {answer.text}\n"
            f"{log_tail()}"
        )
        await asyncio.sleep(0.5)

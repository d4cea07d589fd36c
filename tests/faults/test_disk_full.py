"""PostgreSQL out of disk space (issue 17, part 4): the event store's whole data directory,
WAL included, on a small tmpfs that the test fills with a ballast file.

What must hold: a submission the database cannot store is answered 503 problem+json with
Retry-After (never 500); nothing is half-written (every invariant of ``ledger verify`` holds
over the event store and the read models projected from it, and only accepted jobs exist); and
once space returns (the ballast removed) the next submission is accepted, without restarting
the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.auth import sign_dev_token
from chaos.disk import fill
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
from tests.faults.private_pg import private_postgres, require_root_and_postgres, tmpfs

pytestmark = pytest.mark.integration
DISK_MIB = 96
MAX_SUBMISSIONS_FULL = 300  # bound on the tries to hit the full disk
RECOVERY_S = 30  # how long the service may take to accept again once space returns


async def test_disk_full_refuses_with_503_and_recovers(tmp_path: Path) -> None:
    binaries = require_root_and_postgres()
    with (
        tmpfs(DISK_MIB) as disk,
        private_postgres(binaries, disk / "data") as pg,
    ):
        settings = fault_settings(pg.url("pinksea"), tmp_path)
        user = f"u-{uuid.uuid4().hex[:12]}"
        ballast = disk / "ballast"
        accepted: list[str] = []
        refused: list[str] = []
        async with in_process_api(settings) as (app, client):
            application = app.state.services.application

            async def submit(key: str) -> httpx.Response:
                return await client.post(
                    "/v1/jobs", json=JOB, headers=auth(settings, user, **{"Idempotency-Key": key})
                )

            first = await submit("before")
            assert first.status_code == 202, first.text
            accepted.append(first.json()["job_id"])
            # API keys are written through asyncpg (not the event store's psycopg): a Pro plan
            # may create them, and the user has none yet, so the first one extends a file.
            plan = await client.put(
                f"/v1/admin/users/{user}/plan",
                json={"plan": "pro", "reason": "disk-full test"},
                headers={"Authorization": f"Bearer {sign_dev_token(settings, 'root', admin=True)}"},
            )
            assert plan.status_code == 200, plan.text

            filled = fill(ballast, DISK_MIB)
            assert filled > 0
            answers: list[int] = []
            for n in range(MAX_SUBMISSIONS_FULL):
                r = await submit(f"full-{n}")
                answers.append(r.status_code)
                assert r.status_code != 500, r.text
                if r.status_code == 202:
                    accepted.append(r.json()["job_id"])
                    continue
                assert_unavailable(r)
                refused.append(f"full-{n}")
                if len(refused) >= 3:
                    break
            assert refused, f"{len(answers)} submissions on a full disk, none refused"
            key = await client.post(
                "/v1/api-keys", json={"name": "full"}, headers=auth(settings, user)
            )
            assert key.status_code != 500, key.text
            if key.status_code != 201:
                assert_unavailable(key)
            # A read that needs the database also answers, 2xx or 503, never 500.
            read = await client.get("/v1/jobs", headers=auth(settings, user))
            assert read.status_code in (200, 503), read.text

            ballast.unlink()
            deadline = time.monotonic() + RECOVERY_S
            after: httpx.Response | None = None
            while time.monotonic() < deadline:
                after = await submit("after")
                assert after.status_code != 500, after.text
                if after.status_code == 202:
                    break
                assert_unavailable(after)
                await asyncio.sleep(0.5)
            assert after is not None and after.status_code == 202, (
                f"not accepted {RECOVERY_S} s after space returned: {after and after.text}\n"
                f"{pg.log_tail()}"
            )
            accepted.append(after.json()["job_id"])
            await project_now(application, settings.database_url, start=1)

        # Nothing half-written: only the accepted jobs exist, and the ledger's invariants (holds
        # = accepted jobs' estimates, available + held = granted - charged) hold on a replay.
        assert accepted_job_ids(settings.database_url, user) == set(accepted)
        verify = ledger_verify(pg.url("pinksea"))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with contextlib.suppress(OSError):
            ballast.unlink()
        print(
            f"disk full: {len(answers)} submissions on the full disk, {len(accepted) - 2} "
            f"accepted before it ran out, {len(refused)} refused 503; api key "
            f"{key.status_code}, read {read.status_code}; accepted again after space returned"
        )

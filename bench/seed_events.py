"""Generate a realistic ledger in an event store, fast.

Users sign up, some buy plans and renew, submit jobs that complete, get cancelled before or
while running, fail and retry, have some refunded, and let credit expire. The commands run on
the real domain with in-memory persistence, a few hundred users at a time, and each chunk's
stored events are bulk-copied into ``pinksea_events`` (the sequence numbers them in order).
The result is what the same commands would have written through PostgreSQL, much faster.

    python -m bench.seed_events --events 1000000 [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from domain.application import PinkseaApplication
from domain.errors import DomainError
from domain.job_lifecycle import Fault
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env
from infra.settings import get_settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = [("tiny-sd", 64), ("sd-1.5", 512), ("sdxl-base-1.0", 1024)]
USERS_PER_CHUNK = 200


def _simulate_user(app: PinkseaApplication, user: str, rng: random.Random, jobs: int) -> None:
    at = T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 5))
    app.register_user(user, at)
    plan = rng.choice(["trial", "trial", "starter", "pro", "studio"])
    if plan != "trial":
        end = at + timedelta(days=30)
        app.start_subscription(
            user, plan=plan, external_id=f"sub_{user}", period_start=at, period_end=end, at=at
        )
        app.renew_period(user, invoice_id=f"in_{user}_1", period_start=at, period_end=end, at=at)
    completed = []
    for i in range(jobs):
        at += timedelta(seconds=rng.randrange(5, 3600))
        model, side = rng.choice(MODELS)
        params = JobParameters(
            model=model,
            prompt=f"prompt {i}",
            steps=rng.choice([4, 20, 30]),
            width=side,
            height=side,
        )
        try:
            job = app.submit_job(user, idempotency_key=f"{i}", params=params, at=at)
        except DomainError:
            continue
        if job.job_id is None:  # refused: nothing was saved
            continue
        fate = rng.random()
        app.record_dispatch(job.job_id, attempt=1, worker_id="w1", at=at)
        if fate < 0.05:
            app.cancel_job(job.job_id, at)
            continue
        app.record_start(job.job_id, attempt=1, worker_id="w1", gpu="T4", at=at)
        gpu_ms = rng.randrange(1, max(2, job.budget_ms))
        at += timedelta(milliseconds=gpu_ms)
        if fate < 0.10:
            app.fail_job(
                job.job_id,
                attempt=1,
                reason="out of memory",
                retryable=False,
                fault=Fault.PLATFORM,
                gpu_ms=gpu_ms,
                at=at,
            )
        elif fate < 0.13:
            app.cancel_job(job.job_id, at)
            app.record_cancelled_run(job.job_id, attempt=1, gpu_ms=gpu_ms // 2, at=at)
        else:
            app.complete_job(
                job.job_id, attempt=1, gpu_ms=gpu_ms, cuda_ms=gpu_ms - 1, images=[], at=at
            )
            completed.append(job.job_id)
    if completed and rng.random() < 0.2:
        app.refund_job(completed[0], reason="bad output", actor="support", at=at)
    app.expire_due(user, at + timedelta(days=45))


async def seed(database_url: str, events: int, rng_seed: int = 0) -> int:
    """Write about ``events`` events; returns how many were written."""
    PinkseaApplication(env=event_store_env(database_url, pool_size=1)).close()  # the tables
    rng = random.Random(rng_seed)
    conn = await asyncpg.connect(database_url)
    written, chunk = 0, 0
    try:
        while written < events:
            app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
            for u in range(USERS_PER_CHUNK):
                _simulate_user(app, f"user-{chunk}-{u}", rng, jobs=rng.randrange(5, 60))
            rows = [
                (n.originator_id, n.originator_version, n.topic, n.state)
                for n in app.recorder.select_notifications(start=1, limit=10**9)
            ]
            await conn.copy_records_to_table(
                "pinksea_events",
                records=rows,
                columns=["originator_id", "originator_version", "topic", "state"],
            )
            written += len(rows)
            chunk += 1
    finally:
        await conn.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed a realistic ledger into an event store.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    url = args.database_url or get_settings().database_url
    started = time.perf_counter()
    n = asyncio.run(seed(url, args.events, args.seed))
    print(f"seeded {n} events in {time.perf_counter() - started:.1f}s into {url}")


if __name__ == "__main__":
    main()

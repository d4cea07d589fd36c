"""bench.append: accepted job submissions per second through the Application on PostgreSQL.

Each submission reads the user's subscription and credit account, validates, creates the job and
reserves its hold, and saves job + account in one transaction (three stored events). The
baseline, measured in the same run against the same server, is a raw psycopg loop that inserts
rows of the same sizes into the same table and commits, one transaction per submission: the
floor of what PostgreSQL costs for those writes. Both run with 1 and with 4 concurrent writers.

    python -m bench.append [--quick]

The last line printed is the JSON summary (its fields: BENCHMARKS.md); the headline is the
case with the lower ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from rich.console import Console
from rich.table import Table

from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env
from infra.settings import get_settings

TARGET_RATIO = 0.5
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = JobParameters(model="tiny-sd", prompt="a lighthouse at dawn", steps=4, width=64, height=64)
JOBS_PER_USER = 8  # below the trial plan's queue limit, so every submission is accepted


@dataclass
class Case:
    writers: int
    app_rate: float
    raw_rate: float
    locked_rate: float

    @property
    def ratio(self) -> float:
        return self.app_rate / self.raw_rate


def _admin_url(database_url: str, dbname: str) -> str:
    base, _, _ = database_url.rpartition("/")
    return f"{base}/{dbname}"


def _run_threads(writers: int, work: Callable[[int], int]) -> float:
    """Run ``work(writer_index)`` on ``writers`` threads; returns operations per second."""
    done = [0] * writers
    barrier = threading.Barrier(writers + 1)

    def run(i: int) -> None:
        barrier.wait()
        done[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def bench_application(database_url: str, writers: int, submissions: int) -> float:
    app = PinkseaApplication(env=event_store_env(database_url, pool_size=writers))
    users_per_writer = -(-submissions // (writers * JOBS_PER_USER))
    run_id = uuid.uuid4().hex[:8]
    users = [[f"bench-{run_id}-{w}-{u}" for u in range(users_per_writer)] for w in range(writers)]
    for batch in users:
        for user in batch:
            app.register_user(user, T0)
    per_writer = submissions // writers

    def work(w: int) -> int:
        accepted = 0
        for i in range(per_writer):
            user = users[w][i // JOBS_PER_USER]
            result = app.submit_job(user, idempotency_key=f"k{i}", params=PARAMS, at=T0)
            accepted += result.status == "accepted"
        return accepted

    try:
        rate = _run_threads(writers, work)
    finally:
        app.close()
    return rate


def _sample_rows(database_url: str) -> list[tuple[str, bytes]]:
    """The (topic, state) of the three events one submission stores, to copy their sizes."""
    app = PinkseaApplication(env=event_store_env(database_url, pool_size=1))
    user = f"sample-{uuid.uuid4().hex[:8]}"
    app.register_user(user, T0)
    result = app.submit_job(user, idempotency_key="sample", params=PARAMS, at=T0)
    rows = app.recorder.select_notifications(start=result.position - 2, limit=3)
    app.close()
    return [(n.topic, n.state) for n in rows]


def bench_raw(database_url: str, writers: int, submissions: int, *, lock: bool = False) -> float:
    """Raw INSERT+COMMIT of the same rows. With ``lock``, each transaction first takes the
    table lock the library takes to keep notification ids in commit order."""
    rows = _sample_rows(database_url)
    per_writer = submissions // writers

    def work(w: int) -> int:
        with psycopg.connect(database_url) as conn:
            for _ in range(per_writer):
                with conn.cursor() as cur:
                    if lock:
                        cur.execute("LOCK TABLE pinksea_events IN EXCLUSIVE MODE")
                    for version, (topic, state) in enumerate(rows, start=1):
                        cur.execute(
                            "INSERT INTO pinksea_events "
                            "(originator_id, originator_version, topic, state) "
                            "VALUES (%s, %s, %s, %s)",
                            (uuid.uuid4(), version, topic, state),
                        )
                conn.commit()
        return per_writer

    return _run_threads(writers, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer submissions (< 60 s)")
    args = parser.parse_args()
    submissions = 400 if args.quick else 4000

    settings = get_settings()
    dbname = f"pinksea_bench_{os.getpid()}"
    admin = psycopg.connect(settings.database_url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = _admin_url(settings.database_url, dbname)
    cases: list[Case] = []
    try:
        PinkseaApplication(env=event_store_env(database_url, pool_size=1)).close()  # tables
        for writers in (1, 4):
            raw = bench_raw(database_url, writers, submissions)
            locked = bench_raw(database_url, writers, submissions, lock=True)
            app = bench_application(database_url, writers, submissions)
            cases.append(Case(writers, app, raw, locked))
    finally:
        admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        admin.close()

    table = Table(title=f"bench.append: {submissions} accepted submissions per case")
    columns = (
        "writers",
        "Application (subm/s)",
        "raw INSERT+COMMIT (subm/s)",
        "ratio",
        "raw + table lock (subm/s)",
        "ratio to locked",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for c in cases:
        table.add_row(
            str(c.writers),
            f"{c.app_rate:.0f}",
            f"{c.raw_rate:.0f}",
            f"{c.ratio:.2f}",
            f"{c.locked_rate:.0f}",
            f"{c.app_rate / c.locked_rate:.2f}",
        )
    Console().print(table)
    worst = min(cases, key=lambda c: c.ratio)
    print(
        json.dumps(
            {
                "name": "append",
                "unit": "submissions/s",
                "value": round(worst.app_rate, 1),
                "baseline": round(worst.raw_rate, 1),
                "ratio": round(worst.ratio, 3),
                "target": TARGET_RATIO,
                "ok": all(c.ratio >= TARGET_RATIO for c in cases),
            }
        )
    )


if __name__ == "__main__":
    main()

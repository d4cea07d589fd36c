"""bench.append: accepted job submissions per second through the Application on PostgreSQL.

Each submission reads the user's subscription and credit account, validates, creates the job and
reserves its hold, and saves job + account (three stored events), through the group-committing
recorder (eventstore/group_commit.py: concurrent saves share one transaction). The baseline,
measured in the same run against the same server with the same number of writers, is a raw
psycopg loop that inserts rows of the same sizes into the same table and commits, one
transaction per submission: the floor of what PostgreSQL costs for those writes. Also shown:
that raw loop taking the library's table lock first, and the Application without group commit
(one transaction per command, as the library does). 1, 4, 8 and 16 concurrent writers.

    python -m bench.append [--quick]

The last line printed is the JSON summary (its fields: BENCHMARKS.md); the headline is the
8-writer case's ratio; ``ok`` also needs the one-writer target.
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
from eventstore.group_commit import GroupCommitApplicationRecorder
from eventstore.persistence import event_store_env
from infra.settings import get_settings

WRITER_COUNTS = (1, 4, 8, 16)
HEADLINE_WRITERS = 8
TARGET_RATIO = 0.75  # with 8 writers
TARGET_RATIO_ONE_WRITER = 0.5
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = JobParameters(model="tiny-sd", prompt="a lighthouse at dawn", steps=4, width=64, height=64)
JOBS_PER_USER = 8  # below the trial plan's queue limit, so every submission is accepted


@dataclass
class Case:
    writers: int
    app_rate: float
    raw_rate: float
    locked_rate: float
    ungrouped_rate: float  # the Application without group commit
    batch_size_mean: float  # saves per transaction of the group-committed run
    cpu_ms: float  # this process's CPU time per submission (all threads; the GIL's ceiling)

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


def bench_application(
    database_url: str, writers: int, submissions: int, *, group_commit: bool = True
) -> tuple[float, float, float]:
    """Accepted submissions per second, the mean saves per transaction (1 without group
    commit), and this process's CPU milliseconds per submission."""
    app = PinkseaApplication(
        env=event_store_env(database_url, pool_size=writers, group_commit=group_commit)
    )
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

    recorder = app.recorder
    batches_before = (
        len(recorder.committer.batch_sizes)
        if isinstance(recorder, GroupCommitApplicationRecorder)
        else 0
    )
    cpu_before_s = time.process_time()
    try:
        rate = _run_threads(writers, work)
    finally:
        app.close()
    cpu_ms = (time.process_time() - cpu_before_s) * 1000 / (per_writer * writers)
    if not isinstance(recorder, GroupCommitApplicationRecorder):
        return rate, 1.0, cpu_ms
    sizes = recorder.committer.batch_sizes[batches_before:]
    return rate, sum(sizes) / max(1, len(sizes)), cpu_ms


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
        for writers in WRITER_COUNTS:
            raw = bench_raw(database_url, writers, submissions)
            locked = bench_raw(database_url, writers, submissions, lock=True)
            app, batch_mean, cpu_ms = bench_application(database_url, writers, submissions)
            ungrouped, _, _ = bench_application(
                database_url, writers, submissions, group_commit=False
            )
            cases.append(Case(writers, app, raw, locked, ungrouped, batch_mean, cpu_ms))
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
        "saves per commit",
        "CPU ms/subm",
        "without group commit (subm/s)",
        "its ratio",
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
            f"{c.batch_size_mean:.1f}",
            f"{c.cpu_ms:.2f}",
            f"{c.ungrouped_rate:.0f}",
            f"{c.ungrouped_rate / c.raw_rate:.2f}",
        )
    Console().print(table)
    by_writers = {c.writers: c for c in cases}
    headline, alone = by_writers[HEADLINE_WRITERS], by_writers[1]
    print(
        json.dumps(
            {
                "name": "append",
                "unit": "submissions/s",
                "writers": HEADLINE_WRITERS,
                "value": round(headline.app_rate, 1),
                "baseline": round(headline.raw_rate, 1),
                "ratio": round(headline.ratio, 3),
                "target": TARGET_RATIO,
                "ratio_one_writer": round(alone.ratio, 3),
                "target_one_writer": TARGET_RATIO_ONE_WRITER,
                "ratios": {str(c.writers): round(c.ratio, 3) for c in cases},
                "ok": headline.ratio >= TARGET_RATIO and alone.ratio >= TARGET_RATIO_ONE_WRITER,
            }
        )
    )


if __name__ == "__main__":
    main()

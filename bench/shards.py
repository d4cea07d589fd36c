"""bench.shards: accepted submissions per second on one event store vs two user-hash shards.

The path past one PostgreSQL primary (docs/SCALING.md) splits users by a hash of their id over
shards, each with its own event table (and, deployed, its own relay into the same Kafka
topics): a user's aggregates (credit account, subscription, jobs) always live in one shard, so
every ledger invariant stays inside one transaction of one shard. This measures what the split
buys on this machine. Each case runs API-like processes (their own connections, their own
group committer, writer threads routing each user to its shard): one process on one store; two
processes on one store (the baseline: what adding API instances alone gives); two processes on
two stores (two databases of the same server: two tables, two table locks; the server's WAL
and this machine's cores are shared, so this isolates the lock, not two machines' capacity).

    python -m bench.shards [--quick]

The ratio is two shards' combined rate over the baseline (target ≥ 1.5, where the lock is the
ceiling; on a machine where the CPU is, the ratio says so by staying near 1).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.support import scratch_database, summary
from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env

TARGET_RATIO = 1.5
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = JobParameters(model="tiny-sd", prompt="a lighthouse at dawn", steps=4, width=64, height=64)
JOBS_PER_USER = 8  # below the trial plan's queue limit: every submission is accepted
SHARDS_MAX = 8


def shard_of(user_id: str, shards: int) -> int:
    """The shard that holds every aggregate of ``user_id``: a stable hash, never a lookup."""
    assert 1 <= shards <= SHARDS_MAX
    return zlib.crc32(user_id.encode()) % shards


def _writers(apps: list[PinkseaApplication], users: list[list[str]], per_writer: int) -> int:
    """Each writer thread submits ``per_writer`` jobs for its users, routed to their shards."""
    shards = len(apps)
    done = [0] * len(users)

    def work(w: int) -> None:
        for i in range(per_writer):
            user = users[w][i // JOBS_PER_USER]
            result = apps[shard_of(user, shards)].submit_job(
                user, idempotency_key=f"k{i}", params=PARAMS, at=T0
            )
            done[w] += result.status == "accepted"
        assert done[w] == per_writer, f"writer {w}: {done[w]}/{per_writer} accepted"

    threads = [threading.Thread(target=work, args=(w,)) for w in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def _process(
    urls: list[str],
    writers: int,
    per_writer: int,
    start: Any,  # multiprocessing.Barrier: every process starts its writers together
    out: Any,  # multiprocessing.Queue of (accepted, started, finished)
) -> None:
    """One API-like process: its own connections to every shard, its own users."""
    apps = [PinkseaApplication(env=event_store_env(u, pool_size=writers)) for u in urls]
    try:
        run_id = uuid.uuid4().hex[:8]
        users_per_writer = -(-per_writer // JOBS_PER_USER)
        users = [
            [f"shard-{run_id}-{w}-{u}" for u in range(users_per_writer)] for w in range(writers)
        ]
        for batch in users:
            for user in batch:
                apps[shard_of(user, len(apps))].register_user(user, T0)
        start.wait()
        started = time.monotonic()
        accepted = _writers(apps, users, per_writer)
        out.put((accepted, started, time.monotonic()))
    finally:
        for app in apps:
            app.close()


def rate(shards: int, processes: int, writers: int, submissions: int) -> float:
    """Accepted submissions per second from ``processes`` processes of ``writers`` threads,
    users routed over ``shards`` stores (CLOCK_MONOTONIC is one clock for all processes)."""
    assert 1 <= processes <= 8
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(scratch_database(f"pinksea_shard{i}")).database_url
            for i in range(shards)
        ]
        for url in urls:  # the tables, before the processes race to create them
            PinkseaApplication(env=event_store_env(url, pool_size=1)).close()
        context = multiprocessing.get_context("spawn")
        start, out = context.Barrier(processes), context.Queue()
        per_writer = submissions // (processes * writers)
        workers = [
            context.Process(target=_process, args=(urls, writers, per_writer, start, out))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        results = [out.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0, f"a bench process failed ({worker.exitcode})"
    accepted = sum(r[0] for r in results)
    return accepted / (max(r[2] for r in results) - min(r[1] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer submissions (< 60 s)")
    args = parser.parse_args()
    submissions = 800 if args.quick else 8000
    writers = 4  # per process
    cases = [
        ("1 process, one store", 1, 1),
        ("2 processes, one store (baseline)", 1, 2),
        ("2 processes, two shards", 2, 2),
    ]
    rates = [
        (label, rate(shards, processes, writers, submissions)) for label, shards, processes in cases
    ]
    baseline, sharded = rates[1][1], rates[2][1]
    table = Table(
        title=f"bench.shards: {submissions} accepted submissions, {writers} writers a process"
    )
    for col in ("case", "subm/s", "vs baseline"):
        table.add_column(col, justify="right")
    for label, value in rates:
        table.add_row(label, f"{value:.0f}", f"{value / baseline:.2f}")
    Console().print(table)
    summary("shards", "submissions/s", sharded, baseline, TARGET_RATIO)


if __name__ == "__main__":
    main()

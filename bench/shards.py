"""bench.shards: accepted submissions per second on one event store vs two user-hash shards.

The path past one PostgreSQL primary (docs/SCALING.md) splits users by a hash of their id over
shards, each with its own event table (and, deployed, its own relay into the same Kafka
topics): a user's aggregates (credit account, subscription, jobs) always live in one shard, so
every ledger invariant stays inside one transaction of one shard. This measures what the split
buys on this machine: the same writers, the same submissions, once against one store and once
routed over two stores (two databases of the same server here: each has its own table lock,
which is the ceiling the split removes; the server's WAL and this machine's cores are shared,
so the combined rate is a lower bound of two real primaries).

    python -m bench.shards [--quick]

The baseline is the one-store rate measured in the same run; the ratio is two shards' combined
rate over it (target ≥ 1.5: the lock was the ceiling).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

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


def _threads(writers: int, work: Callable[[int], int]) -> float:
    """``work(writer)`` on ``writers`` threads started together; operations per second."""
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


@contextlib.contextmanager
def _stores(shards: int, writers: int) -> Iterator[list[PinkseaApplication]]:
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(scratch_database(f"pinksea_shard{i}")).database_url
            for i in range(shards)
        ]
        apps = [PinkseaApplication(env=event_store_env(u, pool_size=writers)) for u in urls]
        try:
            yield apps
        finally:
            for app in apps:
                app.close()


def rate(shards: int, writers: int, submissions: int) -> float:
    """Accepted submissions per second, users routed over ``shards`` stores."""
    with _stores(shards, writers) as apps:
        run_id = uuid.uuid4().hex[:8]
        per_writer = submissions // writers
        users_per_writer = -(-per_writer // JOBS_PER_USER)
        users = [
            [f"shard-{run_id}-{w}-{u}" for u in range(users_per_writer)] for w in range(writers)
        ]
        for batch in users:
            for user in batch:
                apps[shard_of(user, shards)].register_user(user, T0)

        def work(w: int) -> int:
            accepted = 0
            for i in range(per_writer):
                user = users[w][i // JOBS_PER_USER]
                app = apps[shard_of(user, shards)]
                result = app.submit_job(user, idempotency_key=f"k{i}", params=PARAMS, at=T0)
                accepted += result.status == "accepted"
            assert accepted == per_writer, f"writer {w}: {accepted}/{per_writer} accepted"
            return accepted

        return _threads(writers, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer submissions (< 60 s)")
    args = parser.parse_args()
    submissions = 400 if args.quick else 4000
    rows = []
    for writers in (4, 8):
        one = rate(1, writers, submissions)
        two = rate(2, writers, submissions)
        rows.append((writers, one, two))
    table = Table(title=f"bench.shards: {submissions} accepted submissions per case")
    for col in ("writers", "one store (subm/s)", "two shards (subm/s)", "ratio"):
        table.add_column(col, justify="right")
    for writers, one, two in rows:
        table.add_row(str(writers), f"{one:.0f}", f"{two:.0f}", f"{two / one:.2f}")
    Console().print(table)
    _, one, two = rows[-1]  # the headline: 8 writers
    summary("shards", "submissions/s", two, one, TARGET_RATIO)


if __name__ == "__main__":
    main()

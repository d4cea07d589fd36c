"""bench.verify: ``pinksea ledger verify`` over a realistic ledger: events/s and peak memory.

A scratch database is seeded with bench/seed_events.py (1,000,000 events; about 50,000 with
--quick), the read models are filled as ``pinksea projections rebuild --all`` fills them
(projections/replay.py, every projection), and then, each in a child process of its own so
that its peak RSS is its alone (VmHWM, read by the child from /proc/self/status when it is
done: the high-water mark of its own address space. Not wait4's ru_maxrss, which also counts
the parent's memory that the child shared before exec):

- ledger verify: the CLI's own command function (cli/ledger.py ``verify``: progress bar,
  replay of every event, every invariant, every read-model table compared);
- baseline: a raw SELECT + decode of the same rows (audit/store.py ``stream_events`` over the
  same topics, iterated without any verification work).

The throughput of each is events / the time of the call itself, timed inside the child (the
interpreter's start-up and imports are reported separately, as wall time). Targets: verify
>= 0.3x the raw rate, and peak memory < 512 MiB at any store size (issue 18: verify streams
aggregates, so its peak should not grow with the store; compare two --events sizes).

    python -m bench.verify [--quick] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from bench.support import scratch_database, summary
from infra.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.3
TARGET_PEAK_BYTES = 512 * 2**20
QUICK_EVENTS = 50_000
FULL_EVENTS = 1_000_000
QUICK_USERS_PER_CHUNK = 55  # seed_events writes 200 users (~90k events) per chunk by default
ALL_TOPICS = "all"
# The projections whose tables ledger verify compares: only these are rebuilt for it.
VERIFIED_PROJECTIONS = ("ledger", "jobs", "subscriptions")


# ------------------------------------------------------------------------------ the store


@dataclass
class Store:
    events: int  # written by the seeder
    seed_s: float
    rebuild_s: float = 0.0
    rebuilt: dict[str, int] | None = None  # projection -> events replayed


async def prepare_store(
    settings: Settings, events: int, *, quick: bool, read_models: bool
) -> Store:
    """Seed ``settings``' database; with ``read_models``, rebuild every projection."""
    from bench import seed_events
    from infra.kafka import ensure_topics
    from read_models.migrate import migrate

    if quick:  # smaller chunks, so a quick store is not one 90k-event chunk
        seed_events.USERS_PER_CHUNK = QUICK_USERS_PER_CHUNK
    started = time.perf_counter()
    written = await seed_events.seed(settings.database_url, events)
    store = Store(written, time.perf_counter() - started)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await migrate(conn)
        if read_models:
            from infra.db import create_pool
            from projections.registry import get_projection
            from projections.replay import rebuild

            await ensure_topics(settings)  # the hand-over records Kafka's end offsets
            pool = await create_pool(settings, max_size=4)
            started = time.perf_counter()
            store.rebuilt = {}
            try:
                for name in VERIFIED_PROJECTIONS:
                    projection = get_projection(name)
                    result = await rebuild(settings, pool, projection, batch_size=5000)
                    store.rebuilt[projection.name] = result.events
            finally:
                await pool.close()
            store.rebuild_s = time.perf_counter() - started
        await conn.execute("ANALYZE")
        await conn.fetchval("SELECT count(*) FROM pinksea_events")  # warm the cache once
    finally:
        await conn.close()
    return store


async def count(database_url: str, topics: str) -> int:
    from audit.store import ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS, count_events

    conn = await asyncpg.connect(database_url)
    try:
        patterns = (
            (ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS)
            if topics == ALL_TOPICS
            else (ACCOUNT_EVENTS,)
        )
        return await count_events(conn, patterns)
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ children


@dataclass
class ChildRun:
    what: str
    seconds: float  # the call itself, timed in the child
    wall_s: float  # the whole child process, start-up and imports included
    peak_rss_bytes: int
    returncode: int
    output: str

    @property
    def peak_mib(self) -> float:
        return self.peak_rss_bytes / 2**20


def run_child(what: str, database_url: str, *extra: str) -> ChildRun:
    """``python -m bench.verify --child WHAT``, with its timing and its own peak RSS."""
    argv = [sys.executable, "-m", "bench.verify", "--child", what, "--database-url", database_url]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, *extra], cwd=REPO, stdout=out, stderr=err)
        proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith('{"child"')]
    reported: dict[str, Any] = (
        json.loads(lines[-1]) if lines else {"seconds": float("nan"), "peak_rss": 0}
    )
    return ChildRun(
        what, reported["seconds"], wall, reported["peak_rss"], proc.returncode, stdout + stderr
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM) since its exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_main(what: str, database_url: str, topics: str, out: str | None) -> None:
    """In the child: run one thing, timed; then print {"child", "seconds", "exit", "peak_rss"}."""
    seconds = 0.0
    code = 0
    if what == "raw":
        from audit.store import ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS, stream_events

        patterns = (
            (ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS)
            if topics == ALL_TOPICS
            else (ACCOUNT_EVENTS,)
        )

        async def raw() -> float:
            conn = await asyncpg.connect(database_url)
            try:
                started = time.perf_counter()
                n = 0
                async for _ in stream_events(conn, topics=patterns):
                    n += 1
                return time.perf_counter() - started
            finally:
                await conn.close()

        seconds = asyncio.run(raw())
    elif what == "startup":
        import cli.main  # noqa: F401  (what `pinksea` imports before its first event: every command module)
    else:
        import click

        from cli import ledger

        started = time.perf_counter()
        try:
            if what == "verify":
                ledger.verify(database_url=database_url)
            elif what == "export":
                ledger.export(
                    start=None,
                    end=None,
                    fmt="parquet",
                    out=Path(out or "export.parquet"),
                    database_url=database_url,
                )
            else:
                raise SystemExit(f"unknown child {what!r}")
        except click.exceptions.Exit as e:
            code = e.exit_code
        seconds = time.perf_counter() - started
    report = {"child": what, "seconds": seconds, "exit": code, "peak_rss": peak_rss_bytes()}
    print(json.dumps(report), flush=True)
    sys.exit(code)


# ------------------------------------------------------------------------------ the bench


async def run(events: int, quick: bool) -> None:
    with scratch_database("bench_verify") as settings:
        from bench.projection_lag import drop_topics

        try:
            store = await prepare_store(settings, events, quick=quick, read_models=True)
        finally:
            await drop_topics(settings)
        total = await count(settings.database_url, ALL_TOPICS)
        startup = run_child("startup", settings.database_url)
        raw = run_child("raw", settings.database_url, "--topics", ALL_TOPICS)
        verify = run_child("verify", settings.database_url)

    raw_rate, verify_rate = total / raw.seconds, total / verify.seconds
    ratio = verify_rate / raw_rate
    table = Table(title=f"bench.verify: {total:,} events ({store.events:,} seeded)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("seed (bench/seed_events.py)", f"{store.seed_s:.1f} s")
    rebuilt = ", ".join(f"{k} {v:,}" for k, v in (store.rebuilt or {}).items())
    table.add_row("rebuild of every projection (events)", f"{store.rebuild_s:.1f} s ({rebuilt})")
    table.add_row("ledger verify: time (in its process)", f"{verify.seconds:.1f} s")
    table.add_row("ledger verify: events/s", f"{verify_rate:,.0f}")
    table.add_row("ledger verify: exit status", f"{verify.returncode} (0 = every check passed)")
    table.add_row(
        "ledger verify: peak RSS",
        f"{verify.peak_mib:,.0f} MiB (target < {TARGET_PEAK_BYTES / 2**20:,.0f} MiB)",
    )
    table.add_row("ledger verify: process wall time incl. start-up", f"{verify.wall_s:.1f} s")
    table.add_row("raw SELECT + decode: events/s (baseline)", f"{raw_rate:,.0f}")
    table.add_row("raw SELECT + decode: peak RSS", f"{raw.peak_mib:,.0f} MiB")
    table.add_row("CLI start-up alone (import cli.main): peak RSS", f"{startup.peak_mib:,.0f} MiB")
    table.add_row("verify / raw", f"{ratio:.3f} (target >= {TARGET_RATIO})")
    Console().print(table)
    memory_ok = verify.peak_rss_bytes < TARGET_PEAK_BYTES
    print(
        f"peak memory {'meets' if memory_ok else 'misses'} its target "
        f"({verify.peak_mib:,.0f} MiB of {TARGET_PEAK_BYTES / 2**20:,.0f} MiB)"
    )
    if verify.returncode != 0:
        print("ledger verify FAILED on the seeded store; its output:")
        print(verify.output[-3000:])
    summary("verify", "events/s", verify_rate, raw_rate, TARGET_RATIO)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark `pinksea ledger verify`.")
    parser.add_argument("--quick", action="store_true", help=f"about {QUICK_EVENTS:,} events")
    parser.add_argument("--events", type=int, default=None, help="events to seed")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--topics", default=ALL_TOPICS, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.database_url, args.topics, args.out)
        return
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    asyncio.run(run(events, args.quick))


if __name__ == "__main__":
    main()

"""bench.export: ``pinksea ledger export --format parquet`` of all postings: rows/s, peak memory.

A scratch database is seeded with bench/seed_events.py (1,000,000 events; about 50,000 with
--quick). Then, each in a child process of its own so that its peak RSS (VmHWM, see
bench/verify.py) is its alone:

- the export: the CLI's own command function (cli/ledger.py ``export``: progress bar, every
  credit event decoded, its postings as rows, Parquet written in chunks);
- baseline: a raw SELECT + decode of the same events (audit/store.py ``stream_events`` over
  the credit-account events the export reads, without building or writing rows).

value = exported rows / s, baseline = raw events / s, so ratio = rows/s over events/s (a
posting row per event is the unit of work both share: most credit events post two rows, some
none). Each is timed inside its child, without the interpreter's start-up. Targets: ratio >=
0.3; peak memory is reported (the export streams: it should stay flat as the store grows).

    python -m bench.export [--quick] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.support import scratch_database, summary
from bench.verify import FULL_EVENTS, QUICK_EVENTS, count, prepare_store, run_child

TARGET_RATIO = 0.3
ACCOUNT_TOPICS = "account"


async def run(events: int, quick: bool) -> None:
    import pyarrow.parquet as pq

    with scratch_database("bench_export") as settings, tempfile.TemporaryDirectory() as tmp:
        store = await prepare_store(settings, events, quick=quick, read_models=False)
        credit_events = await count(settings.database_url, ACCOUNT_TOPICS)
        startup = run_child("startup", settings.database_url)
        raw = run_child("raw", settings.database_url, "--topics", ACCOUNT_TOPICS)
        out = Path(tmp) / "postings.parquet"
        export = run_child("export", settings.database_url, "--out", str(out))
        rows = pq.ParquetFile(out).metadata.num_rows if out.exists() else 0
        size = out.stat().st_size if out.exists() else 0

    rows_rate, events_rate = rows / export.seconds, credit_events / export.seconds
    raw_rate = credit_events / raw.seconds
    table = Table(
        title=f"bench.export: Parquet, {rows:,} postings from {credit_events:,} credit events "
        f"({store.events:,} events seeded)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("seed (bench/seed_events.py)", f"{store.seed_s:.1f} s")
    table.add_row("export: time (in its process)", f"{export.seconds:.1f} s")
    table.add_row("export: rows/s", f"{rows_rate:,.0f}")
    table.add_row("export: credit events/s", f"{events_rate:,.0f}")
    table.add_row("export: exit status", str(export.returncode))
    table.add_row("export: peak RSS", f"{export.peak_mib:,.0f} MiB")
    table.add_row("export: Parquet file", f"{size / 2**20:,.1f} MiB")
    table.add_row("export: process wall time incl. start-up", f"{export.wall_s:.1f} s")
    table.add_row("raw SELECT + decode: credit events/s (baseline)", f"{raw_rate:,.0f}")
    table.add_row("raw SELECT + decode: peak RSS", f"{raw.peak_mib:,.0f} MiB")
    table.add_row(
        "CLI start-up alone (import cli.ledger): peak RSS", f"{startup.peak_mib:,.0f} MiB"
    )
    table.add_row("export rows/s / raw events/s", f"{rows_rate / raw_rate:.3f} (target >= 0.3)")
    table.add_row("export events/s / raw events/s", f"{events_rate / raw_rate:.3f}")
    Console().print(table)
    if export.returncode != 0 or rows == 0:
        print("the export FAILED; its output:")
        print(export.output[-3000:])
    summary("export", "rows/s", rows_rate, raw_rate, TARGET_RATIO)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark `pinksea ledger export`.")
    parser.add_argument("--quick", action="store_true", help=f"about {QUICK_EVENTS:,} events")
    parser.add_argument("--events", type=int, default=None, help="events to seed")
    args = parser.parse_args()
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    asyncio.run(run(events, args.quick))


if __name__ == "__main__":
    main()

"""One row per posting, streamed to CSV, JSON lines or Parquet with flat memory.

Each row carries what an analyst needs to audit a charge without joining anything: the event
and its position, the user, the account and amount, the lot with its source and reference
(the Stripe invoice id for subscription credit), and for job charges the measured GPU-ms,
the CUDA-event audit time, the rate and the tier. Memory holds only the account->user and
lot->(source, reference) maps, which grow with accounts and lots, not with events.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount
from domain.postings import postings_for

COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "string"),
    ("position", "int64"),
    ("occurred_at", "timestamp"),
    ("event_type", "string"),
    ("aggregate_id", "string"),
    ("user_id", "string"),
    ("account", "string"),
    ("amount_mc", "int64"),
    ("lot_id", "string"),
    ("lot_source", "string"),
    ("lot_reference", "string"),
    ("job_id", "string"),
    ("gpu_ms", "int64"),
    ("cuda_ms", "int64"),
    ("rate_mc_per_ms", "int64"),
    ("tier", "string"),
)
NAMES = [name for name, _ in COLUMNS]


async def posting_rows(
    events: AsyncIterable[StoredDomainEvent],
    start: datetime | None = None,
    end: datetime | None = None,
) -> AsyncIterator[dict[str, Any]]:
    users: dict[UUID, str] = {}
    lots: dict[str, tuple[str, str]] = {}
    async for stored in events:
        ev = stored.event
        if isinstance(ev, CreditAccount.Opened):
            users[ev.originator_id] = ev.user_id
        _remember_lots(ev, lots)
        if (start is not None and ev.timestamp < start) or (
            end is not None and ev.timestamp >= end
        ):
            continue
        user = users[ev.originator_id]
        settled = ev if isinstance(ev, CreditAccount.HoldSettled) else None
        for p in postings_for(user, ev):
            source, reference = lots.get(p.lot_id or "", (None, None))
            yield {
                "event_id": f"{ev.originator_id}:{ev.originator_version}",
                "position": stored.position,
                "occurred_at": ev.timestamp,
                "event_type": type(ev).__name__,
                "aggregate_id": str(ev.originator_id),
                "user_id": user,
                "account": p.account,
                "amount_mc": p.amount_mc,
                "lot_id": p.lot_id,
                "lot_source": source,
                "lot_reference": reference,
                "job_id": getattr(ev, "job_id", None),
                "gpu_ms": settled.gpu_ms if settled else None,
                "cuda_ms": settled.cuda_ms if settled else None,
                "rate_mc_per_ms": settled.rate_mc_per_ms if settled else None,
                "tier": (settled.tier or None) if settled else None,
            }


def _remember_lots(ev: object, lots: dict[str, tuple[str, str]]) -> None:
    if isinstance(ev, CreditAccount.CreditsGranted):
        lots[ev.lot_id] = (ev.source, ev.reference)
    elif isinstance(ev, CreditAccount.CreditsAdjusted) and ev.new_lot is not None:
        lots[ev.new_lot["lot_id"]] = ("admin", f"adjustment:{ev.adjustment_id}")
    elif isinstance(ev, CreditAccount.CreditsRefunded) and ev.new_lot is not None:
        lots[ev.new_lot["lot_id"]] = ("refund", f"refund:{ev.hold_id}")


async def write_export(rows: AsyncIterable[dict[str, Any]], fmt: str, out: IO[str] | Path) -> int:
    """Write ``rows`` in ``fmt`` (csv, jsonl, parquet); returns the number of rows."""
    if fmt == "parquet":
        if not isinstance(out, Path):
            raise ValueError("parquet needs --out PATH")
        return await _write_parquet(rows, out)
    stream = out.open("w", newline="") if isinstance(out, Path) else out
    try:
        count = 0
        if fmt == "csv":
            writer = csv.DictWriter(stream, fieldnames=NAMES)
            writer.writeheader()
            async for row in rows:
                writer.writerow({**row, "occurred_at": row["occurred_at"].isoformat()})
                count += 1
        elif fmt == "jsonl":
            async for row in rows:
                stream.write(
                    json.dumps({**row, "occurred_at": row["occurred_at"].isoformat()}) + "\n"
                )
                count += 1
        else:
            raise ValueError(f"unknown format {fmt!r}: use csv, jsonl or parquet")
        return count
    finally:
        if isinstance(out, Path):
            stream.close()


async def _write_parquet(
    rows: AsyncIterable[dict[str, Any]], path: Path, chunk: int = 50_000
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, arrow_types[kind]) for name, kind in COLUMNS])
    count = 0
    buffer: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, schema) as writer:
        async for row in rows:
            buffer.append(row)
            if len(buffer) >= chunk:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                count += len(buffer)
                buffer.clear()
        if buffer or count == 0:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
            count += len(buffer)
    return count

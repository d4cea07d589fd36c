"""Shared pieces of the benchmarks: a scratch database, timing, the summary line."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator

import psycopg

from infra.settings import Settings, get_settings


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[Settings]:
    """Settings pointing at a new database (and Kafka topic prefix) dropped afterwards."""
    base = get_settings()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base.database_url.rsplit('/', 1)[0]}/{name}"
    try:
        yield base.model_copy(
            update={"database_url": url, "kafka_topic_prefix": f"bench{uuid.uuid4().hex[:6]}."}
        )
    finally:
        with psycopg.connect(base.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(
    name: str,
    unit: str,
    value: float,
    baseline: float,
    target: float,
    *,
    higher_is_better: bool = True,
) -> None:
    """The last line every benchmark prints (its fields: BENCHMARKS.md)."""
    ratio = value / baseline if baseline else float("nan")
    ok = ratio >= target if higher_is_better else ratio <= target
    print(
        json.dumps(
            {
                "name": name,
                "unit": unit,
                "value": round(value, 3),
                "baseline": round(baseline, 3),
                "ratio": round(ratio, 4),
                "target": target,
                "ok": bool(ok),
            }
        )
    )

"""Metrics every process gets from its adapters, whatever else it does.

- :func:`instrument_s3`: infra/s3.py calls it on every client it builds (API, GPU worker,
  doctor). ``pinksea_s3_requests_total`` counts HTTP attempts, botocore's own retries
  included, because that is what the bucket's CloudWatch request metrics count, and the
  Prometheus twin of the s3-error-rate alarm must measure the same thing: outcome ``error`` is
  a 4xx or 5xx answer, or no answer at all (``status_class="none"``).
- :func:`track_pool`: infra/db.py calls it for every asyncpg pool; the settler and the
  scheduler add their event store's psycopg pool. The pools are read when ``/metrics`` is
  scraped (a collector), so the figures are of that moment and there is no sampling task to
  start or stop. A collector does not exist in prometheus_client's multiprocess mode, so
  ``pinksea api --workers N>1`` does not export the pool gauges (production runs one worker
  per task).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

S3_REQUESTS = Counter(
    "pinksea_s3_requests_total",
    "S3 HTTP requests, each attempt (botocore's retries included), by outcome",
    ["operation", "outcome", "status_class"],
)


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


def _count_s3_response(
    event_name: str = "",
    response_dict: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """botocore's ``response-received`` handler: one call per HTTP attempt. Returns None (a
    handler's return value could stand in for the response)."""
    from botocore import xform_name

    operation = xform_name(event_name.rsplit(".", 1)[-1]) if event_name else "unknown"
    status = response_dict.get("status_code") if response_dict else None
    failed = exception is not None or status is None or status >= 400
    S3_REQUESTS.labels(operation, "error" if failed else "ok", _status_class(status)).inc()


def instrument_s3(client: Any) -> Any:
    """Count every request ``client`` sends in ``pinksea_s3_requests_total``; returns it."""
    client.meta.events.register("response-received.s3", _count_s3_response)
    return client


class PoolCollector(Collector):
    """Connections of the process's database pools, summed per pool name."""

    def __init__(self) -> None:
        self._pools: dict[int, tuple[Any, str]] = {}
        self._lock = threading.Lock()  # pools are added on the event loop, read by scrapes

    def add(self, pool: Any, name: str) -> None:
        with self._lock:
            self._pools[id(pool)] = (pool, name)

    def _live(self) -> list[tuple[Any, str]]:
        """The pools still open; closed ones are dropped (asyncpg pools take no weak
        references, so they are held until then)."""
        with self._lock:
            for key, (pool, _) in list(self._pools.items()):
                if _closed(pool):
                    del self._pools[key]
            return list(self._pools.values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily(
            "pinksea_db_pool_in_use",
            "Database connections checked out of this process's pools",
            labels=["pool"],
        )
        open_ = GaugeMetricFamily(
            "pinksea_db_pool_connections",
            "Database connections open in this process's pools",
            labels=["pool"],
        )
        max_ = GaugeMetricFamily(
            "pinksea_db_pool_max_connections",
            "Most connections this process's pools may open",
            labels=["pool"],
        )
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for pool, name in self._live():
            try:
                figures = _figures(pool)
            except Exception:  # a pool closing under the scrape: leave it out this once
                continue
            totals[name] = [a + b for a, b in zip(totals[name], figures, strict=True)]
        for name, (used, opened, most) in sorted(totals.items()):
            in_use.add_metric([name], used)
            open_.add_metric([name], opened)
            max_.add_metric([name], most)
        yield in_use
        yield open_
        yield max_


def _closed(pool: Any) -> bool:
    if hasattr(pool, "is_closing"):  # asyncpg
        return bool(pool.is_closing())
    return bool(getattr(pool, "closed", False))  # psycopg_pool


def _figures(pool: Any) -> tuple[int, int, int]:
    """(in use, open, max) of an asyncpg or a psycopg_pool pool."""
    if hasattr(pool, "get_idle_size"):
        size = pool.get_size()
        return size - pool.get_idle_size(), size, pool.get_max_size()
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    return size - stats.get("pool_available", 0), size, stats.get("pool_max", 0)


POOLS = PoolCollector()
REGISTRY.register(POOLS)


def track_pool(pool: Any, name: str) -> Any:
    """Export ``pool``'s connections under ``pool="<name>"`` until it closes; returns it."""
    POOLS.add(pool, name)
    return pool


def track_event_store(application: Any, name: str = "event_store") -> None:
    """The psycopg pool of an eventsourcing application on PostgreSQL, if it has one (the
    POPO store of some tests has none)."""
    pool = getattr(getattr(getattr(application, "recorder", None), "datastore", None), "pool", None)
    if pool is not None:
        track_pool(pool, name)

"""The gauges of ``pinksea project``: computed from the read models and from Kafka's offsets by
:func:`run_gauges`, a loop beside the projections on their pool. Only that process imports
this module, so no other process exports these names.

- ``pinksea_active_users{window}``: users whose newest job was submitted within the window
  (``1d``, ``7d``, ``30d``). One index probe per user (``jobs_user``), no scan of the jobs.
- ``pinksea_mrr_usd``: the list prices of the active subscriptions to paid plans. Negotiated
  (enterprise) prices are not in the event store, so they add nothing; their count is in
  ``pinksea_subscriptions{plan="enterprise",status="active"}``.
- ``pinksea_subscriptions{plan,status}``: subscriptions by plan and status.
- ``pinksea_hold_tightness{tier,quantile}``: charged / hold of the jobs billed in the last 7
  days (``read_models/gpu_rates.py``), quantile ``0.5`` and ``0.95``: near 1 the holds are
  tight (jobs run into their budgets), far below it they reserve credit jobs never use.
- ``pinksea_stopped_at_budget_ratio{tier}``: the share of those jobs stopped at their budget.
- ``pinksea_consumer_lag{group,topic}``: end offset minus committed offset of every
  ``pinksea.*`` consumer group, measured from outside the consumers exactly as the
  ``pinksea lag-metric`` publisher measures it for CloudWatch (the same functions), so a
  group whose consumer died still shows its growing lag. When the measurement fails, every
  lag series is dropped: the ``PinkseaConsumerLagMissing`` rule then fires, as the CloudWatch
  alarm treats a missing lag metric as breaching.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from infra.errors import OPERATIONAL_ERRORS
from infra.settings import Settings
from read_models.gpu_rates import hold_tightness

if TYPE_CHECKING:
    from infra.aws_lag_metric import KafkaConnection

log = structlog.get_logger("gauges")

ACTIVE_USERS = Gauge(
    "pinksea_active_users", "Users whose newest job was submitted within the window", ["window"]
)
MRR_USD = Gauge(
    "pinksea_mrr_usd", "Monthly recurring revenue: list prices of active paid subscriptions"
)
SUBSCRIPTIONS = Gauge(
    "pinksea_subscriptions", "Subscriptions by plan and status", ["plan", "status"]
)
CONSUMER_LAG = Gauge(
    "pinksea_consumer_lag",
    "Events of a topic not yet committed by a consumer group (end - committed offset)",
    ["group", "topic"],
)
HOLD_TIGHTNESS = Gauge(
    "pinksea_hold_tightness",
    "Charged / hold of the jobs billed in the last 7 days, at a quantile",
    ["tier", "quantile"],
)
STOPPED_AT_BUDGET = Gauge(
    "pinksea_stopped_at_budget_ratio",
    "Share of the jobs billed in the last 7 days that were stopped at their hold's budget",
    ["tier"],
)
REFRESH_FAILURES = Counter(
    "pinksea_metrics_refresh_failures_total",
    "Gauge refreshes that failed (the gauges keep their values, the lag is dropped)",
    ["source"],
)

WINDOWS = {"1d": "1 day", "7d": "7 days", "30d": "30 days"}
READ_MODELS_INTERVAL_S = 60.0  # business figures: a minute old is fresh enough
LAG_INTERVAL_S = 15.0  # a typical scrape interval; the lag alarm waits 5 minutes
QUERY_TIMEOUT_S = 10.0  # bounds the cost of a refresh; a slower one fails and is retried

# The interpolated names and spans are the constants above, never input.
_WINDOW_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE newest >= now() - interval '{span}') AS \"{name}\""
    for name, span in WINDOWS.items()
)
_ACTIVE_USERS = f"""
SELECT {_WINDOW_COUNTS}
FROM users AS u
CROSS JOIN LATERAL (
    SELECT j.submitted_at AS newest FROM jobs AS j
    WHERE j.user_id = u.user_id ORDER BY j.submitted_position DESC LIMIT 1
) AS newest_job
"""

_SUBSCRIPTIONS = """
SELECT s.plan, s.status, count(*) AS subscriptions,
       coalesce(sum(p.usd_per_month) FILTER (WHERE s.status = 'active' AND p.type = 'paid'), 0)
           AS usd_per_month
FROM user_subscriptions AS s JOIN subscription_plans AS p ON p.slug = s.plan
GROUP BY s.plan, s.status
"""


# -------------------------------------------------------------------------- read models


async def refresh_read_model_gauges(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        active = await conn.fetchrow(_ACTIVE_USERS, timeout=QUERY_TIMEOUT_S)
        rows = await conn.fetch(_SUBSCRIPTIONS, timeout=QUERY_TIMEOUT_S)
        tightness = await hold_tightness(conn)
    set_labelled(
        HOLD_TIGHTNESS,
        {(t.tier, q): v for t in tightness for q, v in (("0.5", t.p50), ("0.95", t.p95))},
        missing=None,
    )
    set_labelled(STOPPED_AT_BUDGET, {(t.tier,): t.stopped_rate for t in tightness}, missing=None)
    for name in WINDOWS:
        ACTIVE_USERS.labels(name).set(active[name] if active else 0)
    set_labelled(
        SUBSCRIPTIONS, {(r["plan"], r["status"]): r["subscriptions"] for r in rows}, missing=0
    )
    MRR_USD.set(float(sum(r["usd_per_month"] for r in rows)))


_SET: dict[int, set[tuple[str, ...]]] = {}  # id(gauge) -> the label tuples it shows


def set_labelled(
    gauge: Gauge, values: Mapping[tuple[str, ...], float], missing: float | None
) -> None:
    """Set one child per label tuple. Children set before but not in ``values`` are set to
    ``missing``, or removed when it is None (a consumer group that no longer exists)."""
    shown = _SET.get(id(gauge), set())
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    for labels in shown - values.keys():
        if missing is None:
            with contextlib.suppress(KeyError):  # cleared meanwhile
                gauge.remove(*labels)
        else:
            gauge.labels(*labels).set(missing)
    _SET[id(gauge)] = set(values) if missing is None else shown | set(values)


# -------------------------------------------------------------------------- Kafka lag


class _Connection:
    """What ``infra.aws_lag_metric.collect_lag`` needs: this process's Kafka options."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def client_kwargs(self) -> dict[str, Any]:
        from infra.kafka import connection_kwargs

        return connection_kwargs(self.settings)


async def refresh_consumer_lag(settings: Settings) -> None:
    from infra.aws_lag_metric import GROUP_PREFIX, collect_lag

    # Group ids carry the topic prefix (infra.kafka.manual_consumer), like the topics.
    prefix = f"{settings.kafka_topic_prefix}{GROUP_PREFIX}"
    # Duck-typed for KafkaConnection: the options of every other client of this process.
    conn = cast("KafkaConnection", _Connection(settings))
    lags = await asyncio.wait_for(collect_lag(conn, prefix), QUERY_TIMEOUT_S * 2)
    set_labelled(CONSUMER_LAG, {(x.group, x.topic): x.lag for x in lags}, missing=None)


# -------------------------------------------------------------------------- the loop


async def run_gauges(
    settings: Settings,
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    read_models_interval_s: float = READ_MODELS_INTERVAL_S,
    lag_interval_s: float = LAG_INTERVAL_S,
) -> None:
    """Refresh the gauges until ``stop``. A refresh that fails for an operational reason
    (database or broker down or slow) is logged, counted and retried at the next interval, so
    the gauges share a gather with the projections; any other error is a bug and ends the
    process (its supervisor restarts it) rather than going stale unnoticed."""
    loop = asyncio.get_running_loop()
    due = {"read_models": loop.time(), "kafka": loop.time()}
    intervals = {"read_models": read_models_interval_s, "kafka": lag_interval_s}
    while not stop.is_set():
        for source, at in due.items():
            if loop.time() < at:
                continue
            try:
                if source == "read_models":
                    await refresh_read_model_gauges(pool)
                else:
                    await refresh_consumer_lag(settings)
            except OPERATIONAL_ERRORS as e:  # the projections keep running; the gauge goes stale
                REFRESH_FAILURES.labels(source).inc()
                log.warning("gauge refresh failed", source=source, error=repr(e))
                if source == "kafka":
                    CONSUMER_LAG.clear()  # unknown lag must read as missing, not as old
            due[source] = loop.time() + intervals[source]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, min(due.values()) - loop.time()))

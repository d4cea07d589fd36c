"""The metric names the dashboard, the rules and the alarms reference (infra/observability/
check.py), without services: the PromQL scan, the allow-list of other exporters, the
CloudWatch side, and the comparison itself on fixed expositions."""

from __future__ import annotations

import importlib

import pytest

from infra import aws_lag_metric
from infra.observability import check

pytest.importorskip("yaml")
pytest.importorskip("hcl2")


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    return [(name, set(labels)) for name, labels in check.promql_selectors(expr)]


def test_promql_scan_finds_selectors_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, tier) (rate(x_seconds_bucket{tier="a",le!~"1"}'
        "[$__rate_interval]))) / clamp_min(sum without (job) (y_total offset 5m), 1e-9) > 0.05"
    )
    assert selectors(expr) == [("x_seconds_bucket", {"tier", "le"}), ("y_total", set())]
    joined = "avg by (tier) (busy * on (instance, job) group_left (tier) worker_info) and bool up"
    assert selectors(joined) == [("busy", set()), ("worker_info", set()), ("up", set())]
    assert selectors('sum(a{s=~"5.."}) by (route) / ignoring(s) b') == [
        ("a", {"s"}),
        ("b", set()),
    ]
    # Strings hold no metric, braces in them do not end the matchers, durations are no names.
    assert selectors('label_replace(m{l="}x"}, "dst", "$1", "src", "(.*)")[5m:1m]') == [
        ("m", {"l"})
    ]
    assert selectors("count(z) > 2h + .5") == [("z", set())]


def test_the_repository_references_our_metrics_and_not_the_exporters() -> None:
    refs = check.load_references()
    names = refs.names()
    assert {
        "pinksea_api_requests_total",
        "pinksea_api_request_seconds_bucket",
        "pinksea_consumer_lag",
        "pinksea_gpu_job_seconds_bucket",
        "pinksea_gpu_utilization_ratio",
        "pinksea_credits_consumed_mc_total",
        "pinksea_mrr_usd",
        "pinksea_db_pool_in_use",
        "pinksea_dlq_messages_total",
    } <= names
    assert all(check.not_ours(n) is None for n in names)
    assert not any(n.startswith(("pg_", "redis_", "aws_", "process_")) or n == "up" for n in names)
    lag = [r for r in refs.prometheus if r.name == "pinksea_consumer_lag" and r.labels]
    assert lag and {"group", "topic"} <= set().union(*(r.labels for r in lag))
    # CloudWatch: only our namespace, resolved through locals, variables and module outputs.
    cloudwatch = {(r.namespace, r.metric_name, r.dimensions) for r in refs.cloudwatch}
    assert cloudwatch == {
        ("Pinksea/Kafka", "MaxConsumerLag", frozenset({"Environment"})),
        ("Pinksea/Kafka", "GpuBacklog", frozenset({"Environment", "Tier"})),
    }
    every = check.cloudwatch_references(check.load_terraform())
    assert any(r.namespace == "AWS/RDS" for r in every)
    assert all(not r.namespace.startswith("${") for r in every), "unresolved namespace"


EXPOSITION = """\
# HELP pinksea_a_total a
# TYPE pinksea_a_total counter
pinksea_a_total{tier="basic"} 3.0
# HELP pinksea_h_seconds h
# TYPE pinksea_h_seconds histogram
pinksea_h_seconds_bucket{le="1.0"} 1.0
pinksea_h_seconds_bucket{le="+Inf"} 1.0
pinksea_h_seconds_count 1.0
pinksea_h_seconds_sum 0.5
# HELP pinksea_g_ratio g
# TYPE pinksea_g_ratio gauge
"""


def test_compare_tells_missing_from_not_yet_sampled_and_checks_labels() -> None:
    refs = check.References(
        prometheus=[
            check.Reference("pinksea_a_total", frozenset({"tier", "job"}), "panel A"),
            check.Reference("pinksea_a_total", frozenset({"colour"}), "rule B"),
            check.Reference("pinksea_h_seconds_bucket", frozenset({"le"}), "panel C"),
            check.Reference("pinksea_h_seconds", frozenset(), "panel D"),  # not a series
            check.Reference("pinksea_g_ratio", frozenset(), "panel E"),
            check.Reference("pinksea_nobody", frozenset(), "rule F"),
        ],
        cloudwatch=[
            check.CloudWatchReference(
                "Pinksea/Kafka", "MaxConsumerLag", frozenset({"Environment"}), "alarm G"
            ),
            check.CloudWatchReference(
                "Pinksea/Kafka", "GpuBacklog", frozenset({"Environment"}), "alarm H"
            ),
            check.CloudWatchReference("Other", "X", frozenset(), "alarm I"),
        ],
    )
    data = aws_lag_metric.metric_data(
        [], "test", backlog=aws_lag_metric.gpu_backlog([], {}), timestamp=0
    )
    result = check.compare(refs, check.emitted({"worker": EXPOSITION}), data, "Pinksea/Kafka")
    assert not result.ok
    assert result.missing == {"pinksea_h_seconds": ["panel D"], "pinksea_nobody": ["rule F"]}
    assert result.without_samples == {"pinksea_g_ratio": ["worker"]}
    assert result.missing_labels == {"pinksea_a_total{colour}": ["rule B"]}  # job: a target label
    assert result.emitted_by["pinksea_h_seconds_bucket"] == ["worker"]
    assert set(result.cloudwatch_missing) == {
        "GpuBacklog {Environment}",  # published with Tier: CloudWatch would not match
        "namespace Other (the publisher writes Pinksea/Kafka)",
    }
    assert "pinksea_nobody  (rule F)" in result.summary()
    clean = check.compare(
        check.References(prometheus=refs.prometheus[2:3]), check.emitted({"w": EXPOSITION})
    )
    assert clean.ok and not clean.cloudwatch_checked


# Every module that defines metrics of a process; importing them registers their metrics.
METRIC_MODULES = [
    "api.app",
    "eventstore.relay",
    "projections.runner",
    "workflows.expiry",
    "workflows.settler",
    "workflows.metrics",
    "projections.gauges",
    "workflows.scheduler.service",
    "gpu_consumer.worker",
    "infra.observability.instrument",
]


def test_every_referenced_metric_is_defined_in_the_code() -> None:
    """The fast half of tests/e2e/test_metrics_emitted.py: every name is at least declared by
    some module (one registry here, one per process there)."""
    from prometheus_client import REGISTRY, generate_latest

    for module in METRIC_MODULES:
        importlib.import_module(module)
    result = check.compare(
        check.load_references(), check.emitted({"code": generate_latest(REGISTRY).decode()})
    )
    assert result.missing == {}, result.summary()

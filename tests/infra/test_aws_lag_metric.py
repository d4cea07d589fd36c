"""The consumer-lag publisher's pure part: offsets in, CloudWatch metric data out."""

from __future__ import annotations

from typing import Any

from infra import aws_lag_metric as lm
from infra.aws_lag_metric import Partition, TopicLag


def test_partition_lag() -> None:
    assert lm.partition_lag(end=120, committed=100) == 20
    assert lm.partition_lag(end=100, committed=100) == 0
    assert lm.partition_lag(end=90, committed=100) == 0  # never negative
    assert lm.partition_lag(end=50, committed=None, start=10) == 40  # no commit: from log start
    assert lm.partition_lag(end=50, committed=-1, start=0) == 50


def test_group_lag_sums_partitions_per_topic() -> None:
    d0, d1 = (
        Partition("pinksea.gpu.dispatch.basic.v1", 0),
        Partition("pinksea.gpu.dispatch.basic.v1", 1),
    )
    r0 = Partition("pinksea.gpu.reports.v1", 0)
    gone = Partition("pinksea.old.v1", 0)
    lags = lm.group_lag(
        "pinksea-gpu-basic",
        committed={d0: 10, d1: None, r0: 7, gone: 3},
        end_offsets={d0: 25, d1: 4, r0: 7},
        start_offsets={d1: 1},
    )
    assert lags == [
        TopicLag("pinksea-gpu-basic", "pinksea.gpu.dispatch.basic.v1", 15 + 3),
        TopicLag("pinksea-gpu-basic", "pinksea.gpu.reports.v1", 0),
    ]


def _by(data: list[dict[str, Any]], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple((d["Name"], d["Value"]) for d in item["Dimensions"]): item["Value"]
        for item in data
        if item["MetricName"] == name
    }


def test_metric_data_matches_the_alarm_dimensions() -> None:
    lags = [
        TopicLag("pinksea-gpu-basic", "pinksea.gpu.dispatch.basic.v1", 12),
        TopicLag("pinksea-projections", "pinksea.jobs.v1", 3),
        TopicLag("pinksea-projections", "pinksea.credits.v1", 4),
    ]
    data = lm.metric_data(
        lags, "production", groups=["pinksea-gpu-high_performance"], timestamp=0.0
    )
    per_group = _by(data, "ConsumerLag")
    env = ("Environment", "production")
    # what the GPU scaling alarms read: {Environment, ConsumerGroup}
    assert per_group[(env, ("ConsumerGroup", "pinksea-gpu-basic"))] == 12
    assert per_group[(env, ("ConsumerGroup", "pinksea-projections"))] == 7
    assert per_group[(env, ("ConsumerGroup", "pinksea-gpu-high_performance"))] == 0
    assert (
        per_group[(env, ("ConsumerGroup", "pinksea-projections"), ("Topic", "pinksea.jobs.v1"))]
        == 3
    )
    # what the consumer-lag alarm reads: {Environment}
    assert _by(data, "MaxConsumerLag") == {(env,): 12}
    assert all(item["Unit"] == "Count" for item in data)


def test_gpu_backlog_is_queue_depth_plus_dispatch_lag() -> None:
    lags = [
        # every worker reads the whole dispatch topic in a group of its own: take the largest
        TopicLag("pinksea.gpu.worker.a", "pinksea.gpu.dispatch.basic.v1", 2),
        TopicLag("pinksea.gpu.worker.b", "pinksea.gpu.dispatch.basic.v1", 5),
        TopicLag("pinksea.gpu.worker.c", "pinksea.gpu.dispatch.high_performance.v1", 1),
        TopicLag("pinksea.projection.jobs", "pinksea.jobs.v1", 40),  # not GPU work
    ]
    depths = {"basic": 7.0, "dedicated": 0.0}
    assert lm.gpu_backlog(lags, depths) == {"basic": 12, "high_performance": 1, "dedicated": 0}
    data = lm.metric_data(lags, "production", backlog=lm.gpu_backlog(lags, depths), timestamp=0.0)
    backlog = _by(data, "GpuBacklog")
    env = ("Environment", "production")
    assert backlog[(env, ("Tier", "basic"))] == 12
    assert backlog[(env, ("Tier", "high_performance"))] == 1


def test_departed_worker_groups_are_not_measured() -> None:
    groups = [
        "pinksea.gpu.worker.live",
        "pinksea.gpu.worker.rebalancing",
        "pinksea.gpu.worker.scaled-in",
        "t1.pinksea.gpu.worker.expired",  # a topic prefix before the name
        "pinksea.settler",
        "pinksea.projection.jobs",
    ]
    states = {
        "pinksea.gpu.worker.live": "Stable",
        "pinksea.gpu.worker.rebalancing": "PreparingRebalance",
        "pinksea.gpu.worker.scaled-in": "Empty",
        "t1.pinksea.gpu.worker.expired": "Dead",
        "pinksea.settler": "Empty",  # the settler down: its lag must keep paging
    }
    assert lm.measured_groups(groups, states) == [
        "pinksea.gpu.worker.live",
        "pinksea.gpu.worker.rebalancing",
        "pinksea.projection.jobs",
        "pinksea.settler",
    ]
    assert lm.is_worker_group("t1.pinksea.gpu.worker.expired")
    assert not lm.is_worker_group("pinksea.projection.jobs")


def test_queue_depths_from_the_scheduler_metrics() -> None:
    text = (
        "# HELP pinksea_queue_depth Jobs waiting for a worker\n"
        "# TYPE pinksea_queue_depth gauge\n"
        'pinksea_queue_depth{tier="basic"} 14.0\n'
        'pinksea_queue_depth{tier="high_performance"} 0.0\n'
        "# HELP pinksea_idle_workers Live idle workers\n"
        "# TYPE pinksea_idle_workers gauge\n"
        'pinksea_idle_workers{tier="basic"} 0.0\n'
    )
    assert lm.queue_depths(text) == {"basic": 14.0, "high_performance": 0.0}


def test_metric_data_without_groups_still_reports_zero_max() -> None:
    data = lm.metric_data([], "staging", timestamp=0.0)
    assert _by(data, "MaxConsumerLag") == {(("Environment", "staging"),): 0}


class FakeCloudWatch:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def put_metric_data(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def test_publish_respects_the_put_metric_data_limit() -> None:
    lags = [TopicLag(f"pinksea-g{i}", "t", i) for i in range(1200)]
    data = lm.metric_data(lags, "production", timestamp=0.0)
    cw = FakeCloudWatch()
    calls = lm.publish(data, "Pinksea/Kafka", cw)
    assert calls == len(cw.calls) == 3  # 2401 items, 1000 per call
    assert all(len(c["MetricData"]) <= lm.MAX_ITEMS_PER_CALL for c in cw.calls)
    assert sum(len(c["MetricData"]) for c in cw.calls) == len(data)
    assert {c["Namespace"] for c in cw.calls} == {"Pinksea/Kafka"}


def test_cli_defaults_match_the_terraform_contract(monkeypatch: Any) -> None:
    monkeypatch.setenv("PINKSEA_KAFKA_BOOTSTRAP_SERVERS", "b-1:9098,b-2:9098")
    monkeypatch.setenv("PINKSEA_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PINKSEA_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    args = lm.parse_args(["--environment", "production", "--interval", "0", "--dry-run"])
    assert args.bootstrap_servers == "b-1:9098,b-2:9098"
    assert (args.security_protocol, args.sasl_mechanism) == ("SASL_SSL", "OAUTHBEARER")
    assert args.namespace == "Pinksea/Kafka"
    assert args.tier == ["basic", "high_performance", "dedicated"]
    assert args.group_prefix == "pinksea."
    assert args.interval == 0 and args.dry_run

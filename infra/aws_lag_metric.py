"""Publish Kafka consumer lag and the GPU backlog as CloudWatch metrics (the scaling signal).

An adapter, nothing more. Every ``--interval`` seconds it reads the committed offsets of every
``pinksea.*`` consumer group and the end offsets of the partitions they consume, optionally the
scheduler's queue depth from its ``/metrics``, and writes to the CloudWatch namespace
``Pinksea/Kafka``:

``ConsumerLag``    {Environment, ConsumerGroup}          sum of the group's lag over its topics
``ConsumerLag``    {Environment, ConsumerGroup, Topic}   the same, per topic
``MaxConsumerLag`` {Environment}                         the largest group lag (alarm > 100)
``GpuBacklog``     {Environment, Tier}                   jobs waiting for a GPU of that tier

``GpuBacklog`` is what the GPU auto-scaling groups scale on (infra/terraform/modules/compute/
gpu.tf): the jobs the scheduler still holds for the tier (``pinksea_queue_depth{tier}``) plus
the largest lag of a live worker group (``pinksea.gpu.worker.<id>``, one per worker) on
``pinksea.gpu.dispatch.<tier>.v1``. The scheduler dispatches only to idle workers and to
busy workers' one prefetch slot each, so the dispatch topic alone stays near zero however long
the queue grows; without ``--queue-metrics-url`` the backlog is the dispatch lag alone. (A
prefetched job has left the queue: the backlog reads up to one job per busy worker lower than
the jobs not yet started.)

Workers come and go: only live worker groups are measured
-------------------------------------------------------------
Each worker commits under a group of its own, named after its host, and a scaled-in host
never comes back: its group keeps its last committed offsets, so its lag only grows with every
later dispatch. Measured like any other group, it held ``GpuBacklog`` (and
``MaxConsumerLag``) high forever, and the tier scaled out to its maximum after the first
scale-in and never back. So a worker group is measured only while it has members: Kafka's
DescribeGroups state ``Empty`` (every member left: a stopped worker leaves at once, a dead
one after its session timeout) or ``Dead`` means departed, and the group is neither counted
in the backlog nor published. Any other group (projections, settler) is always measured: that
one of those is empty means its process is down, which is what the consumer-lag alarm is for.

Why not the alternatives:

- One consumer group per tier would break the dispatch protocol. The scheduler addresses each
  dispatch to one idle worker (``Dispatch.worker_id``) and publishes it keyed by job, not by
  worker; every worker reads the whole topic and runs only its own. In a shared group each
  partition has one reader, so a dispatch would reach its addressee only by chance.
- The scheduler's queue alone (dropping the dispatch lag) would be right too, but would leave
  the backlog blind whenever the sidecar cannot read the scheduler's ``/metrics``, and would
  ignore a dispatch that no live worker has consumed yet.
- Departed groups are not deleted: Kafka expires an empty group's offsets by itself
  (``offsets.retention.minutes``, 7 days by default, MSK included), deleting would need
  ``kafka-cluster:DeleteGroup`` for this sidecar, and a worker restarting on the same host
  (same id, same group) would lose its position to a deletion racing its restart.

Lag of a partition = end offset - committed offset; a partition the group has never committed
counts from the log start (our consumers start at the earliest offset).

Run it as ``pinksea lag-metric`` (cli/processes.py, configured by the ``PINKSEA_*`` settings;
on ECS it is a sidecar of the scheduler task, so it reads the scheduler's metrics on 127.0.0.1)
or as ``python -m infra.aws_lag_metric`` with explicit options. On MSK (TLS + IAM) set
``--security-protocol SASL_SSL --sasl-mechanism OAUTHBEARER`` or the
``PINKSEA_KAFKA_SECURITY_PROTOCOL`` / ``PINKSEA_KAFKA_SASL_MECHANISM`` environment variables;
the connection options are those of every other client (``infra.kafka.security_kwargs``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pinksea.lag_metric")

NAMESPACE = "Pinksea/Kafka"
GROUP_PREFIX = "pinksea."
GPU_TIERS = ("basic", "high_performance", "dedicated")
QUEUE_DEPTH_METRIC = "pinksea_queue_depth"
#: Every GPU worker's own group (gpu_consumer/worker.py), after any topic prefix.
WORKER_GROUP = "pinksea.gpu.worker."
#: DescribeGroups states of a group without members: a worker group in one has departed.
DEPARTED_STATES = frozenset({"Empty", "Dead"})
#: CloudWatch accepts at most 1000 metric data items per PutMetricData call.
MAX_ITEMS_PER_CALL = 1000


@dataclass(frozen=True, order=True)
class Partition:
    topic: str
    partition: int


@dataclass(frozen=True)
class TopicLag:
    group: str
    topic: str
    lag: int


# --------------------------------------------------------------------------------------------
# Pure part: offsets in, lag and metric data out
# --------------------------------------------------------------------------------------------


def partition_lag(end: int, committed: int | None, start: int = 0) -> int:
    """Events of one partition the group has not committed yet (never negative)."""
    position = start if committed is None or committed < 0 else committed
    return max(0, end - position)


def group_lag(
    group: str,
    committed: Mapping[Partition, int | None],
    end_offsets: Mapping[Partition, int],
    start_offsets: Mapping[Partition, int] | None = None,
) -> list[TopicLag]:
    """Lag of one group per topic, over the partitions it has committed offsets for."""
    start_offsets = start_offsets or {}
    per_topic: dict[str, int] = {}
    for tp, offset in committed.items():
        if tp not in end_offsets:
            continue  # partition deleted or not visible: nothing to wait for
        lag = partition_lag(end_offsets[tp], offset, start_offsets.get(tp, 0))
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + lag
    return [TopicLag(group, topic, lag) for topic, lag in sorted(per_topic.items())]


def is_worker_group(group: str) -> bool:
    """A GPU worker's own group: it lives and dies with one host."""
    return WORKER_GROUP in group


def measured_groups(groups: Iterable[str], states: Mapping[str, str]) -> list[str]:
    """``groups`` less the worker groups whose state (``states``) says they have departed.

    Only worker groups are ever left out: an empty projection or settler group is a process
    down, and its lag must keep paging.
    """
    return sorted(
        g for g in groups if not (is_worker_group(g) and states.get(g) in DEPARTED_STATES)
    )


def dispatch_topic(tier: str) -> str:
    """The topic the GPU workers of ``tier`` read (eventstore/envelope.py names it the same way)."""
    return f"pinksea.gpu.dispatch.{tier}.v1"


def queue_depths(metrics_text: str) -> dict[str, float]:
    """``pinksea_queue_depth{tier}`` out of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    depths: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == QUEUE_DEPTH_METRIC and "tier" in sample.labels:
                depths[sample.labels["tier"]] = sample.value
    return depths


def gpu_backlog(
    lags: Iterable[TopicLag], depths: Mapping[str, float], tiers: Iterable[str] = GPU_TIERS
) -> dict[str, int]:
    """Jobs waiting for a GPU per tier: queued in the scheduler plus not yet consumed.

    Every worker reads the whole dispatch topic in a group of its own, so the topic's lag is
    the largest lag among those groups, not their sum. ``lags`` holds live groups only
    (``measured_groups``): a departed worker's group would count its lag forever.
    """
    lags = list(lags)
    return {
        tier: int(depths.get(tier, 0))
        + max((x.lag for x in lags if x.topic.endswith(dispatch_topic(tier))), default=0)
        for tier in tiers
    }


def metric_data(
    lags: Iterable[TopicLag],
    environment: str,
    groups: Iterable[str] = (),
    timestamp: float | None = None,
    backlog: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """CloudWatch ``MetricData`` items for ``put_metric_data``.

    ``groups`` names groups that must be published even without a committed offset (their lag
    is then 0). ``backlog`` (tier => jobs waiting) adds the ``GpuBacklog`` scaling metric.
    """
    ts = time.time() if timestamp is None else timestamp
    lags = list(lags)
    per_group: dict[str, int] = {g: 0 for g in groups}
    for item in lags:
        per_group[item.group] = per_group.get(item.group, 0) + item.lag

    def datum(name: str, value: int, **dims: str) -> dict[str, Any]:
        return {
            "MetricName": name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
            "Timestamp": ts,
            "Value": float(value),
            "Unit": "Count",
        }

    data = [
        datum("ConsumerLag", lag, Environment=environment, ConsumerGroup=group)
        for group, lag in sorted(per_group.items())
    ]
    data += [
        datum(
            "ConsumerLag",
            item.lag,
            Environment=environment,
            ConsumerGroup=item.group,
            Topic=item.topic,
        )
        for item in lags
    ]
    data.append(
        datum("MaxConsumerLag", max(per_group.values(), default=0), Environment=environment)
    )
    data += [
        datum("GpuBacklog", jobs, Environment=environment, Tier=tier)
        for tier, jobs in sorted((backlog or {}).items())
    ]
    return data


def chunks(
    items: Sequence[dict[str, Any]], size: int = MAX_ITEMS_PER_CALL
) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# --------------------------------------------------------------------------------------------
# Kafka side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    region: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        from infra.kafka import security_kwargs

        return security_kwargs(
            self.bootstrap_servers,
            self.security_protocol,
            self.sasl_mechanism,
            self.region,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password,
            ssl_cafile=self.ssl_cafile,
        )


def _describe_groups(groups: list[str]) -> Any:
    """A DescribeGroups request that aiokafka can read the answer to: v0 to v2 only.

    aiokafka 0.14 sends v3 when the broker offers it (every supported Kafka does) but reads the
    answer as v2, without the v3 ``authorized_operations`` field, so any group with members
    fails to decode ("Buffer underrun"); ``AIOKafkaAdminClient.describe_consumer_groups`` is
    unusable for exactly the groups that matter here. v2 carries the state, all we read.
    """
    from aiokafka.protocol.admin import (
        DescribeGroupsRequest_v0,
        DescribeGroupsRequest_v1,
        DescribeGroupsRequest_v2,
    )
    from aiokafka.protocol.api import Request

    class DescribeGroupsUpToV2(
        Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]
    ):
        API_KEY = 15

        def build(self, request_struct_class: Any) -> Any:
            return request_struct_class(groups)

    return DescribeGroupsUpToV2()


async def group_states(admin: Any, groups: Sequence[str]) -> dict[str, str]:
    """DescribeGroups state of each of ``groups`` (``Stable``, ``Empty``, ``Dead``...).

    A group the coordinator reports an error for raises: guessing its liveness would either
    count a departed worker again or hide a live one's lag, so this publication is skipped
    (a missing metric pages, and never scales in).
    """
    from aiokafka.errors import GroupIdNotFound, for_code

    by_coordinator: dict[int, list[str]] = {}
    for group in groups:
        by_coordinator.setdefault(await admin.find_coordinator(group), []).append(group)
    states: dict[str, str] = {}
    for node_id, ids in by_coordinator.items():
        # The admin client's own connection (and its TLS/SASL); see _describe_groups for why
        # not its describe_consumer_groups.
        response = await admin._client.send(node_id, _describe_groups(ids))
        # (error_code, group_id, state, protocol_type, protocol, members)
        for error_code, group, state, *_ in response.groups:
            if error_code == GroupIdNotFound.errno:
                state = "Dead"  # expired since it was listed (newer brokers say so this way)
            elif error_code:
                raise for_code(error_code)(f"DescribeGroups failed for {group}")
            states[group] = state
    return states


async def collect_lag(conn: KafkaConnection, group_prefix: str = GROUP_PREFIX) -> list[TopicLag]:
    """Committed vs end offsets of every consumer group whose id starts with ``group_prefix``,
    less the worker groups that have no members left (``measured_groups``)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(client_id="pinksea-lag-metric", **conn.client_kwargs())
    consumer = AIOKafkaConsumer(
        client_id="pinksea-lag-metric", enable_auto_commit=False, **conn.client_kwargs()
    )
    await admin.start()
    await consumer.start()
    try:
        listed = [
            str(g[0])
            for g in await admin.list_consumer_groups()
            if str(g[0]).startswith(group_prefix)
        ]
        states = await group_states(admin, [g for g in listed if is_worker_group(g)])
        groups = measured_groups(listed, states)
        if len(groups) < len(listed):
            log.info("%d departed worker groups not measured", len(listed) - len(groups))
        committed_by_group: dict[str, dict[Partition, int | None]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed_by_group[group] = {
                Partition(tp.topic, tp.partition): (om.offset if om is not None else None)
                for tp, om in offsets.items()
            }
        partitions = sorted({tp for c in committed_by_group.values() for tp in c})
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
        end_offsets = {Partition(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
        start_offsets = {Partition(tp.topic, tp.partition): int(o) for tp, o in starts.items()}
    finally:
        await consumer.stop()
        await admin.close()

    lags: list[TopicLag] = []
    for group, committed in committed_by_group.items():
        lags += group_lag(group, committed, end_offsets, start_offsets)
    return lags


# --------------------------------------------------------------------------------------------
# CloudWatch side and the loop
# --------------------------------------------------------------------------------------------


def publish(data: Sequence[dict[str, Any]], namespace: str, cloudwatch: Any) -> int:
    """Send ``data`` with as few PutMetricData calls as allowed; returns the number of calls."""
    calls = 0
    for part in chunks(data):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=part)
        calls += 1
    return calls


async def run_once(args: argparse.Namespace, cloudwatch: Any | None) -> list[dict[str, Any]]:
    conn = KafkaConnection(
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism or None,
        region=args.region,
        sasl_username=args.sasl_username or None,
        sasl_password=args.sasl_password or None,
        ssl_cafile=args.ssl_cafile or None,
    )
    lags = await collect_lag(conn, args.group_prefix)
    depths: dict[str, float] = {}
    if args.queue_metrics_url:
        try:
            depths = queue_depths(await asyncio.to_thread(_fetch, args.queue_metrics_url))
        except Exception:  # the scheduler restarting: publish the Kafka part alone
            log.warning("queue depth unavailable from %s", args.queue_metrics_url, exc_info=True)
    backlog = gpu_backlog(lags, depths, args.tier)
    data = metric_data(lags, args.environment, backlog=backlog)
    if cloudwatch is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        await asyncio.to_thread(publish, data, args.namespace, cloudwatch)
    worst = max((d["Value"] for d in data if d["MetricName"] == "MaxConsumerLag"), default=0.0)
    log.info("published %d lag data points, max lag %d", len(data), int(worst))
    return data


def _fetch(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=5) as response:  # an operator-given local URL
        return str(response.read().decode())


async def run(args: argparse.Namespace) -> int:
    cloudwatch = None
    if not args.dry_run:
        import boto3

        cloudwatch = boto3.client(
            "cloudwatch",
            region_name=args.region,
            endpoint_url=args.cloudwatch_endpoint_url or None,  # empty: AWS's own endpoint
        )
    while True:
        started = time.monotonic()
        try:
            await run_once(args, cloudwatch)
        except Exception:  # keep publishing; a silent gap trips the consumer-lag alarm
            log.exception("lag collection failed")
            if args.interval <= 0:
                return 1
        if args.interval <= 0:
            return 0
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))


def _default_bootstrap() -> str:
    env = os.environ.get("PINKSEA_KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    try:
        from infra.settings import get_settings

        return get_settings().kafka_bootstrap_servers
    except Exception:  # pragma: no cover - settings not importable in a bare image
        return "127.0.0.1:9092"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(prog="pinksea lag-metric", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap-servers", default=_default_bootstrap())
    p.add_argument(
        "--security-protocol", default=env.get("PINKSEA_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    )
    p.add_argument("--sasl-mechanism", default=env.get("PINKSEA_KAFKA_SASL_MECHANISM", ""))
    p.add_argument("--sasl-username", default=env.get("PINKSEA_KAFKA_SASL_USERNAME", ""))
    p.add_argument(
        "--ssl-cafile",
        default=env.get("PINKSEA_KAFKA_SSL_CAFILE", ""),
        help="CA that signs the brokers' certificates (default: the system CAs)",
    )
    p.add_argument(
        "--region",
        # the same order as Settings.kafka_region
        default=env.get("PINKSEA_KAFKA_AWS_REGION")
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or env.get("PINKSEA_S3_REGION")
        or "ap-northeast-2",
    )
    p.add_argument(
        "--cloudwatch-endpoint-url",
        default=env.get("PINKSEA_CLOUDWATCH_ENDPOINT_URL", ""),
        help="another CloudWatch endpoint (moto locally); empty: AWS's own",
    )
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--environment", default=env.get("PINKSEA_ENVIRONMENT", "local"))
    p.add_argument("--group-prefix", default=GROUP_PREFIX)
    p.add_argument(
        "--tier",
        action="append",
        default=[],
        help="GPU tier whose backlog is published (repeatable; default: every tier)",
    )
    p.add_argument(
        "--queue-metrics-url",
        default=env.get("PINKSEA_QUEUE_METRICS_URL", ""),
        help="the scheduler's /metrics, for pinksea_queue_depth (e.g. http://127.0.0.1:9103/metrics)",
    )
    p.add_argument("--interval", type=float, default=60.0, help="seconds between runs; 0 runs once")
    p.add_argument("--once", action="store_true", help="publish once and exit (= --interval 0)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the metric data instead of publishing"
    )
    args = p.parse_args(argv)
    # The SCRAM password never comes from the command line, which any local user can read.
    args.sasl_password = env.get("PINKSEA_KAFKA_SASL_PASSWORD", "")
    if args.once:
        args.interval = 0.0
    if not args.tier:
        args.tier = list(GPU_TIERS)
    return args


def main(argv: Sequence[str] | None = None, *, sasl_password: str | None = None) -> int:
    """``sasl_password``: the SCRAM password when the caller has it from elsewhere than the
    environment (``pinksea lag-metric`` from its settings, which may come from a .env file)."""
    logging.basicConfig(level=os.environ.get("PINKSEA_LOG_LEVEL", "INFO"), stream=sys.stderr)
    args = parse_args(argv)
    if sasl_password:
        args.sasl_password = sasl_password
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""``pinksea lag-metric --once`` against the real local Kafka, publishing to moto's CloudWatch.

The local S3 is a moto server, which serves every AWS API on its one port, CloudWatch included:
the metric is read back with the calls the alarms' evaluation amounts to.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from typer.testing import CliRunner

import cli.processes
from cli.main import app
from domain.parameters import RunParameters
from infra.aws_lag_metric import NAMESPACE
from infra.kafka import idempotent_producer, manual_consumer
from infra.messages import Dispatch
from infra.settings import Settings
from infra.topics import dispatch_topic
from tests.conftest import LOCAL_AWS_URL

PRODUCED, COMMITTED = 7, 2


async def _group_with_lag(bootstrap: str, topic: str, group: str) -> None:
    """A one-partition topic with PRODUCED records and ``group`` committed at COMMITTED."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(PRODUCED):
            await producer.send_and_wait(topic, str(i).encode(), partition=0)
    finally:
        await producer.stop()
    # No auto-commit: stop() would commit the consumer's position (the end, 7) over ours
    # whenever it had fetched one by then, so the command measured lag 0 now and then.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(COMMITTED, "")})
    finally:
        await consumer.stop()


def cloudwatch(endpoint: str, region: str) -> Any:
    return boto3.client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def points(
    cw: Any, name: str, start: datetime, end: datetime | None = None, /, **dims: str
) -> list[float]:
    """The per-minute maxima of ``name`` published in [start, end): what the alarms read."""
    found = cw.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=start,
        EndTime=end or datetime.now(UTC) + timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    return [float(p["Maximum"]) for p in found]


def maximum(
    cw: Any, name: str, start: datetime, end: datetime | None = None, /, **dims: str
) -> float:
    found = points(cw, name, start, end, **dims)
    assert found, f"no {name} {dims}"
    return max(found)


def test_once_publishes_the_lag_to_cloudwatch(
    kafka_bootstrap: str,
    run_id: str,
    stack_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = LOCAL_AWS_URL  # moto's CloudWatch (infra/local/aws.sh)
    topic = f"t{run_id}.lagprobe"
    group = f"pinksea.t{run_id}.lagprobe"  # the command measures groups named pinksea.*
    environment = f"test-{run_id}"
    asyncio.run(_group_with_lag(kafka_bootstrap, topic, group))

    # moto takes any credentials; the command reads the default chain, as on ECS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack_settings.s3_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-takes-any")
    settings = stack_settings.model_copy(
        update={"kafka_bootstrap_servers": kafka_bootstrap, "cloudwatch_endpoint_url": endpoint}
    )
    monkeypatch.setattr(cli.processes, "get_settings", lambda: settings)
    started = datetime.now(UTC) - timedelta(minutes=1)
    args = ["lag-metric", "--once", "--environment", environment, "--tier", "basic"]
    result = CliRunner().invoke(app, [*args, "--group-prefix", f"pinksea.t{run_id}."])
    assert result.exit_code == 0, result.output

    cw = cloudwatch(endpoint, settings.kafka_region)
    env = {"Environment": environment}
    lag = PRODUCED - COMMITTED
    # The group has no members left, and is measured all the same: not a worker's group, so
    # an empty one is a process down (see the next test for workers' groups).
    assert maximum(cw, "ConsumerLag", started, **env, ConsumerGroup=group) == lag
    assert maximum(cw, "ConsumerLag", started, **env, ConsumerGroup=group, Topic=topic) == lag
    assert maximum(cw, "MaxConsumerLag", started, **env) == lag
    assert maximum(cw, "GpuBacklog", started, **env, Tier="basic") == 0
    listed = cw.list_metrics(
        Namespace=NAMESPACE, Dimensions=[{"Name": "Environment", "Value": environment}]
    )["Metrics"]
    assert {m["MetricName"] for m in listed} == {"ConsumerLag", "MaxConsumerLag", "GpuBacklog"}


# --------------------------------------------------------------------------------------------
# Workers come and go: a departed worker's group is not measured
# --------------------------------------------------------------------------------------------

#: Where each worker's group commits on the one-partition dispatch topic (of DISPATCHES).
WORKER_COMMITS = {"w1": 7, "w2": 0, "w3": 4}
DISPATCHES = 9


def dispatch(worker_id: str) -> Dispatch:
    return Dispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        worker_id=worker_id,
        user_id="user-1",
        tier="basic",
        parameters=RunParameters(
            model="tiny-sd", prompt="a lighthouse at dusk", steps=4, width=64, height=64, seed=42
        ),
        budget_ms=60_000,
        dispatched_at=datetime.now(UTC),
    )


async def start_worker_consumer(settings: Settings, worker_id: str) -> AIOKafkaConsumer:
    """A member of the worker's own group, set up as GpuWorker.run sets it up, committed at
    WORKER_COMMITS[worker_id]."""
    consumer = manual_consumer(settings, f"pinksea.gpu.worker.{worker_id}", dispatch_topic("basic"))
    await consumer.start()
    async with asyncio.timeout(30):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)  # joins the group; commits nothing
    tp = TopicPartition(settings.topic(dispatch_topic("basic")), 0)
    await consumer.commit({tp: OffsetAndMetadata(WORKER_COMMITS[worker_id], "")})
    return consumer


async def publish_once(settings: Settings, environment: str) -> None:
    """``pinksea lag-metric --once`` for this test's groups. In a thread: the command runs its
    own event loop, and this one keeps the live consumers heartbeating meanwhile."""
    prefix = f"{settings.kafka_topic_prefix}pinksea."
    args = ["lag-metric", "--once", "--environment", environment, "--tier", "basic"]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--group-prefix", prefix])
    assert result.exit_code == 0, result.output


async def committed_offset(settings: Settings, group: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.kafka_topic_prefix + group)
    finally:
        await admin.close()
    mark = offsets.get(TopicPartition(settings.topic(dispatch_topic("basic")), 0))
    return mark.offset if mark else None


async def next_whole_second() -> datetime:
    """Wait for the next second to begin and return it: moto's statistics count from whole
    seconds, and the two publications must fall on either side, as a minute apart they do."""
    now = datetime.now(UTC)
    boundary = now.replace(microsecond=0) + timedelta(seconds=1)
    await asyncio.sleep((boundary - now).total_seconds())
    return boundary


async def test_departed_workers_leave_the_backlog_within_one_period(
    kafka_bootstrap: str,
    run_id: str,
    stack_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = LOCAL_AWS_URL  # moto's CloudWatch (infra/local/aws.sh)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack_settings.s3_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-takes-any")
    settings = stack_settings.model_copy(
        update={
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic_prefix": f"t{run_id}.departed.",
            "cloudwatch_endpoint_url": endpoint,
        }
    )
    monkeypatch.setattr(cli.processes, "get_settings", lambda: settings)
    environment = f"test-{run_id}-departed"
    env = {"Environment": environment}
    topic = settings.topic(dispatch_topic("basic"))
    cw = cloudwatch(endpoint, settings.kafka_region)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        for i in range(DISPATCHES):
            d = dispatch(f"w{i % 3 + 1}")
            await producer.send_and_wait(topic, d.to_bytes(), key=str(d.job_id).encode())
    finally:
        await producer.stop()

    consumers = {w: await start_worker_consumer(settings, w) for w in WORKER_COMMITS}
    try:
        started = datetime.now(UTC) - timedelta(minutes=1)
        await publish_once(settings, environment)
        lags = {w: DISPATCHES - at for w, at in WORKER_COMMITS.items()}
        for w, lag in lags.items():
            group = f"{settings.kafka_topic_prefix}pinksea.gpu.worker.{w}"
            assert maximum(cw, "ConsumerLag", started, **env, ConsumerGroup=group) == lag
        assert maximum(cw, "GpuBacklog", started, **env, Tier="basic") == max(lags.values())
        assert maximum(cw, "MaxConsumerLag", started, **env) == max(lags.values())

        # Two hosts scaled in: their workers stop, and their groups are left without members
        # but with their offsets (Kafka keeps them for days), lag and all.
        for w in ("w2", "w3"):
            await consumers.pop(w).stop()
        assert await committed_offset(settings, "pinksea.gpu.worker.w2") == WORKER_COMMITS["w2"]

        period = await next_whole_second()
        await publish_once(settings, environment)
        # The next publication (the next period of the alarms) counts the live worker alone.
        assert maximum(cw, "GpuBacklog", period, **env, Tier="basic") == lags["w1"]
        assert maximum(cw, "MaxConsumerLag", period, **env) == lags["w1"]
        for w in ("w2", "w3"):
            group = f"{settings.kafka_topic_prefix}pinksea.gpu.worker.{w}"
            assert points(cw, "ConsumerLag", period, **env, ConsumerGroup=group) == []
        group = f"{settings.kafka_topic_prefix}pinksea.gpu.worker.w1"
        assert maximum(cw, "ConsumerLag", period, **env, ConsumerGroup=group) == lags["w1"]
    finally:
        for consumer in consumers.values():
            with contextlib.suppress(Exception):
                await consumer.stop()

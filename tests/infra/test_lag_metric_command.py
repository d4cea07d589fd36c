"""``pinksea lag-metric --once`` against the real local Kafka, publishing to moto's CloudWatch.

The local S3 is a moto server, which serves every AWS API on its one port, CloudWatch included:
the metric is read back with the calls the alarms' evaluation amounts to.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from typer.testing import CliRunner

import cli.lag_metric
from cli.main import app
from infra.aws_lag_metric import NAMESPACE
from infra.settings import Settings

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


def test_once_publishes_the_lag_to_cloudwatch(
    kafka_bootstrap: str,
    run_id: str,
    stack_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = stack_settings.s3_endpoint_url
    if not endpoint:
        pytest.skip("needs the local moto server (PINKSEA_S3_ENDPOINT_URL), not AWS")
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
    monkeypatch.setattr(cli.lag_metric, "get_settings", lambda: settings)
    started = datetime.now(UTC) - timedelta(minutes=1)
    args = ["lag-metric", "--once", "--environment", environment, "--tier", "basic"]
    result = CliRunner().invoke(app, [*args, "--group-prefix", f"pinksea.t{run_id}."])
    assert result.exit_code == 0, result.output

    cw: Any = boto3.client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name=settings.kafka_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )

    def maximum(name: str, **dims: str) -> float:
        points = cw.get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
            StartTime=started,
            EndTime=datetime.now(UTC) + timedelta(minutes=1),
            Period=60,
            Statistics=["Maximum"],
        )["Datapoints"]
        assert points, f"no {name} {dims}"
        return max(float(p["Maximum"]) for p in points)

    lag = PRODUCED - COMMITTED
    assert maximum("ConsumerLag", Environment=environment, ConsumerGroup=group) == lag
    assert maximum("ConsumerLag", Environment=environment, ConsumerGroup=group, Topic=topic) == lag
    assert maximum("MaxConsumerLag", Environment=environment) == lag
    assert maximum("GpuBacklog", Environment=environment, Tier="basic") == 0
    listed = cw.list_metrics(
        Namespace=NAMESPACE, Dimensions=[{"Name": "Environment", "Value": environment}]
    )["Metrics"]
    assert {m["MetricName"] for m in listed} == {"ConsumerLag", "MaxConsumerLag", "GpuBacklog"}

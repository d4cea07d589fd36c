"""Kafka client setup and topic administration (aiokafka)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from infra.envelope import (
    DLQ_TOPIC,
    DOMAIN_TOPICS,
    GPU_TIERS,
    REPORTS_TOPIC,
    dispatch_topic,
)
from infra.settings import Settings

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name, without the settings prefix
    partitions: int
    retention_ms: int  # -1: keep forever

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "min.insync.replicas": "1"}


# Domain topics keep everything: they can rebuild any consumer. Work topics keep a week.
TOPICS: tuple[TopicSpec, ...] = (
    *(TopicSpec(t, 6, -1) for t in DOMAIN_TOPICS),
    *(TopicSpec(dispatch_topic(tier), 3, WEEK_MS) for tier in GPU_TIERS),
    TopicSpec(REPORTS_TOPIC, 6, WEEK_MS),
    TopicSpec(DLQ_TOPIC, 1, 4 * WEEK_MS),
)


async def ensure_topics(settings: Settings, replication_factor: int = 1) -> list[str]:
    """Create every topic that is missing (idempotent). Returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                topic_configs=spec.config(),
            )
            for spec in TOPICS
            if settings.topic(spec.name) not in existing
        ]
        if missing:
            # Another process may create them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


def idempotent_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """acks=all and idempotence: a retried send never duplicates or reorders a partition."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "request_timeout_ms": 10_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def manual_consumer(
    settings: Settings, group_id: str, *topics: str, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer whose offsets the caller commits itself, after its own effects are durable.
    Without ``topics``, the caller subscribes (e.g. with a rebalance listener)."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": f"{settings.kafka_topic_prefix}{group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*(settings.topic(t) for t in topics), **options)

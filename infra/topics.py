"""Kafka topic names (logical: the full name adds Settings.kafka_topic_prefix).

The domain topics carry the public envelopes of eventstore/envelope.py; the work topics carry
the messages of infra/messages.py.
"""

from __future__ import annotations

CREDITS_TOPIC = "pinksea.credits.v1"
SUBSCRIPTIONS_TOPIC = "pinksea.subscriptions.v1"
JOBS_TOPIC = "pinksea.jobs.v1"
DOMAIN_TOPICS = (CREDITS_TOPIC, SUBSCRIPTIONS_TOPIC, JOBS_TOPIC)
REPORTS_TOPIC = "pinksea.gpu.reports.v1"
DLQ_TOPIC = "pinksea.gpu.dlq.v1"
GPU_TIERS = ("basic", "high_performance", "dedicated")


def dispatch_topic(tier: str) -> str:
    return f"pinksea.gpu.dispatch.{tier}.v1"

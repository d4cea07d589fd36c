"""Counters of the billing pipeline, incremented where the fact becomes final.

- ``pinksea_credits_consumed_mc_total{tier}`` and ``pinksea_images_generated_total{tier}``: by
  the settler, after a settlement command was applied. A redelivered report finds the job
  settled (``applied`` False) and counts nothing, so each job counts at most once; a crash
  between the command and the increment loses that one increment (counters restart at 0
  with the process anyway, which ``increase()`` absorbs). Refunds are not subtracted: they
  are their own events (``pinksea ledger``), and a counter only goes up.
- ``pinksea_dlq_messages_total{source}``: dead letters published by the settler (a job out of
  attempts) and by the scheduler (its workers lost on every attempt).

The gauges ``pinksea project`` computes from the read models and from Kafka are in
projections/gauges.py (imported by that process alone, so no other process exports them).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

CREDITS_CONSUMED = Counter(
    "pinksea_credits_consumed_mc_total",
    "Millicredits charged by applied settlements (completed, cancelled after start, user faults)",
    ["tier"],
)
IMAGES_GENERATED = Counter(
    "pinksea_images_generated_total", "Images of jobs whose completion was settled", ["tier"]
)
DLQ_MESSAGES = Counter(
    "pinksea_dlq_messages_total", "Dead letters published to pinksea.gpu.dlq.v1", ["source"]
)


def dead_letters(source: str) -> Any:
    """The DLQ counter of one publisher, created at 0 so ``increase()`` sees its first letter."""
    return DLQ_MESSAGES.labels(source)


def count_settlement(tier: str, charged_mc: int, images: int) -> None:
    if charged_mc > 0:
        CREDITS_CONSUMED.labels(tier).inc(charged_mc)
    if images > 0:
        IMAGES_GENERATED.labels(tier).inc(images)

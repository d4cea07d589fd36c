"""``stop_bounded``: a process's last Kafka calls end within the bound, whatever the broker
does (the worker cut off from Kafka, end to end: tests/faults/test_worker_partition.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from infra.kafka import stop_bounded


async def test_calls_past_the_bound_are_cut_short_and_logged() -> None:
    unanswered = asyncio.Event()  # a LeaveGroup that no broker answers
    reached_after = False
    with capture_logs() as logs:
        async with stop_bounded(timeout_s=0.05):
            await unanswered.wait()
            reached_after = True
    assert not reached_after
    assert [(e["event"], e["timeout_s"]) for e in logs] == [("kafka not left in time", 0.05)]


async def test_calls_within_the_bound_run_to_the_end_unlogged() -> None:
    done = []
    with capture_logs() as logs:
        async with stop_bounded(timeout_s=5):
            await asyncio.sleep(0)
            done.append("stopped")
    assert done == ["stopped"] and logs == []


async def test_a_failure_other_than_the_bound_is_not_swallowed() -> None:
    with pytest.raises(KafkaConnectionError):
        async with stop_bounded(timeout_s=5):
            raise KafkaConnectionError("refused")


async def test_a_bound_must_be_positive() -> None:
    with pytest.raises(AssertionError):
        async with stop_bounded(timeout_s=0):
            pass

"""The settler rides out operational errors instead of dying (infra/errors.py).

CI once lost the settler of the e2e harness to a commit the broker refused after its group
rebalanced (CommitFailedError, a KafkaError): the loop caught nothing, so the task ended and
nothing settled after it. Here the error is the database's: the event store's table is held
locked for longer than the settler's lock timeout, so saving a settlement fails with an
operational error, a real one from PostgreSQL. The settler must back off, read the batch
again once the lock is gone, and settle the job exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import REGISTRY

from domain.application import PinkseaApplication
from domain.credits import CreditAccount
from eventstore.persistence import event_store_env
from infra.kafka import idempotent_producer
from infra.messages import Finished, Outcome, Started
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC
from tests.conftest import _delete_kafka_topics
from tests.integration.streaming_kit import TINY, fresh_database, prepare_stack, wait_until
from workflows.settler import Settler
from workflows.tracking import TrackingPinkseaApplication

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
GPU_MS = 1234


@pytest.fixture
async def own(settings: Settings) -> AsyncIterator[Settings]:
    """A database and topics of this test's own."""
    with fresh_database(settings.database_url) as url:
        mine = settings.model_copy(
            update={
                "database_url": url,
                "kafka_topic_prefix": f"{settings.kafka_topic_prefix}r{uuid.uuid4().hex[:8]}.",
            }
        )
        await prepare_stack(mine)
        try:
            yield mine
        finally:
            await _delete_kafka_topics(mine.kafka_bootstrap_servers, mine.kafka_topic_prefix)


def retries() -> float:
    return REGISTRY.get_sample_value("pinksea_settler_retries_total") or 0.0


async def test_a_settlement_refused_by_the_database_is_retried_and_applied_once(
    own: Settings,
) -> None:
    app = PinkseaApplication(env=event_store_env(own.database_url, pool_size=2))
    # Writers wait at most 1 s for the table lock (production waits 10 s).
    env = {**event_store_env(own.database_url, pool_size=2), "POSTGRES_LOCK_TIMEOUT": "1"}
    settler = Settler(own, TrackingPinkseaApplication(env=env))
    now = datetime.now(UTC)
    app.register_user("ria", now)
    job_id = app.submit_job("ria", idempotency_key="locked", params=TINY, at=now).job_id
    assert job_id is not None
    app.record_dispatch(job_id, attempt=1, worker_id="w", at=now)

    stop = asyncio.Event()
    task = asyncio.create_task(settler.run(stop))
    producer = idempotent_producer(own)
    await producer.start()
    lock = psycopg.connect(own.database_url, autocommit=False)
    try:
        retried_before = retries()
        # Writes wait on this lock (the event store takes the same one to append).
        lock.execute("LOCK TABLE pinksea_events IN EXCLUSIVE MODE")
        topic, key = own.topic(REPORTS_TOPIC), str(job_id).encode()
        reports = (
            Started(job_id=job_id, attempt=1, worker_id="w", gpu="cpu", model_load_ms=0, at=now),
            Finished(
                job_id=job_id,
                attempt=1,
                worker_id="w",
                outcome=Outcome.COMPLETED,
                gpu_ms=GPU_MS,
                at=now,
            ),
        )
        for report in reports:
            await producer.send_and_wait(topic, report.to_bytes(), key=key)

        async def retried_twice() -> bool:
            assert not task.done(), task  # the settler died on the database's refusal
            return retries() >= retried_before + 2

        await wait_until(retried_twice, timeout=60, interval=0.1)
        assert app.job(job_id).status == "dispatched", "settled through the lock"
        lock.rollback()  # the lock is gone: the next try settles

        async def settled() -> bool:
            assert not task.done(), task
            return (await asyncio.to_thread(app.job, job_id)).is_terminal

        await wait_until(settled, timeout=60, interval=0.1)
    finally:
        lock.close()
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()

    done = app.job(job_id)
    assert done.status == "completed" and done.charged_mc == GPU_MS, done
    account = app.account("ria")
    settlements = [
        e for e in app.events.get(account.id) if isinstance(e, CreditAccount.HoldSettled)
    ]
    assert len(settlements) == 1 and account.held_mc == 0
    settler.app.close()
    app.close()

"""Crypto-shredding on the real stack (issue 17, part 5): a sealed prompt travels the event store
and the jobs topic sealed, reaches the GPU worker opened (the scheduler holds the key), and
after the key is destroyed the ledger still verifies and a projection rebuilt from the store
still reads the prompt as erased."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from domain.jobs import JobParameters
from domain.personal_data import ERASED, is_sealed, opened
from infra.kafka import TOPICS, connection_kwargs
from infra.personal_keys import PersonalKeys, parse_kek
from infra.topics import JOBS_TOPIC, dispatch_topic
from tests.e2e.test_generation_flow import REPO, Platform, models_cache, platform, stack
from tests.integration.streaming_kit import wait_until

pytestmark = pytest.mark.integration
__all__ = ["models_cache", "platform", "stack"]  # the fixtures, from the generation flow's
PROMPT = "the view from my bedroom window at 17 Rue Oberkampf"


async def _topic_values(platform: Platform, topic: str) -> list[str]:
    """Every message of the topic (all partitions, from the start up to their ends now)."""
    settings = platform.settings
    consumer = AIOKafkaConsumer(**connection_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        name = settings.topic(topic)
        count = next(spec.partitions for spec in TOPICS if spec.name == topic)
        partitions = [TopicPartition(name, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        values: list[str] = []
        for _ in range(100):  # polls of at most a second: the topic is a test's few messages
            positions = {p: await consumer.position(p) for p in partitions}
            if all(positions[p] >= ends[p] for p in partitions):
                return values
            batches = await consumer.getmany(*partitions, timeout_ms=1000)
            values += [m.value.decode() for msgs in batches.values() for m in msgs if m.value]
        raise AssertionError(f"{name} not read to its end")
    finally:
        await consumer.stop()


def _cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    settings = platform.settings
    env = {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


async def test_a_sealed_prompt_runs_and_is_erased_with_its_key(platform: Platform) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    assert platform.pool is not None
    keys = PersonalKeys(platform.pool, parse_kek(settings.personal_data_kek.get_secret_value()))
    user = f"eve-{uuid.uuid4().hex[:6]}"
    app.register_user(user, datetime.now(UTC))
    params = JobParameters(model="tiny-sd", prompt=PROMPT, steps=4, width=64, height=64)
    job = app.submit_job(
        user,
        idempotency_key="k",
        params=params,
        at=datetime.now(UTC),
        sealer=await keys.key_for(user),
    )
    assert job.job_id is not None and job.status == "accepted"
    await platform.until_terminal(job.job_id)
    done = app.job(job.job_id)
    # It ran (and was billed) on the opened prompt: completed, or stopped at its budget when
    # the machine is slow; either way settled.
    assert done.status in ("completed", "failed") and done.charged_mc > 0, done.status

    # The jobs topic carries the sealed form only; the dispatch the worker ran, the plaintext.
    published = await _topic_values(platform, JOBS_TOPIC)
    assert any(str(job.job_id) in v for v in published)
    assert not any(PROMPT in v for v in published)
    dispatched = await _topic_values(platform, dispatch_topic("basic"))
    assert [v for v in dispatched if str(job.job_id) in v and PROMPT in v]

    async def projected() -> bool:
        row = await platform.pool.fetchrow(  # type: ignore[union-attr]
            "SELECT j.status, b.held_mc FROM jobs j JOIN balances b USING (user_id) "
            "WHERE j.job_id = $1",
            job.job_id,
        )
        return row is not None and (row["status"], row["held_mc"]) == (done.status, 0)

    await wait_until(projected, timeout=30)
    assert await keys.erase(user)
    assert not await keys.erase(user)  # once
    available = app.account(user).available_mc(datetime.now(UTC))

    # The ledger replays and verifies as before; the account is as it was.
    verified = _cli(platform, "ledger", "verify", "--database-url", settings.database_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert app.account(user).available_mc(datetime.now(UTC)) == available

    # The jobs read model rebuilt from the event store: the prompt is still sealed, and with
    # the key gone it opens to nothing but the marker.
    rebuilt = _cli(platform, "projections", "rebuild", "jobs")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    stored = await platform.pool.fetchval(
        "SELECT parameters::jsonb FROM jobs WHERE job_id = $1", job.job_id
    )
    parameters = json.loads(stored)
    assert is_sealed(parameters["prompt"]) and PROMPT not in stored
    assert opened(parameters, await keys.opener(user))["prompt"] == ERASED

"""The streaming layer on the real stack: relay to Kafka with no loss, projections with
exactly-once effects, rebuilds that hand over without gap or duplicate, read-your-writes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from eventsourcing.postgres import PostgresApplicationRecorder

from domain.application import PinkseaApplication
from eventstore.relay import Relay
from infra.db import create_pool
from infra.settings import Settings
from projections.consistency import has_reached
from projections.registry import ALL_PROJECTIONS
from projections.replay import rebuild
from projections.runner import LiveProjectionRunner
from tests.integration.streaming_kit import (
    T0,
    TINY,
    busy_user,
    consume_all,
    fresh_database,
    new_app,
    prepare_stack,
    running,
    store_event_ids,
    wait_until,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(database_url: str) -> Iterator[Settings]:
    """Settings with a database and a topic prefix of this test's own."""
    with fresh_database(database_url) as url:
        yield Settings(database_url=url, kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.")


def process_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }


def spawn(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args, "--metrics-port", "0"],
        cwd=REPO,
        env=process_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def relay_position(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchval("SELECT coalesce(max(position), 0) FROM relay_positions")
    finally:
        await conn.close()


async def read_model_dump(pool: asyncpg.Pool) -> dict[str, list[tuple]]:
    dump = {}
    for projection in ALL_PROJECTIONS:
        for table in projection.tables:
            rows = await pool.fetch(f"SELECT * FROM {table}")
            dump[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return dump


async def assert_ledger_matches_aggregates(
    pool: asyncpg.Pool, app: PinkseaApplication, users: list[str]
) -> None:
    for user in users:
        account = app.account(user)
        row = await pool.fetchrow(
            "SELECT available_mc, held_mc FROM balances WHERE user_id = $1", user
        )
        assert row is not None, f"no balance row for {user}"
        assert row["available_mc"] == sum(lot.remaining_mc for lot in account.lots.values())
        assert row["held_mc"] == account.held_mc
    total = await pool.fetchval("SELECT coalesce(sum(amount_mc), 0) FROM postings")
    assert total == 0


def live_runners(settings: Settings, pool: asyncpg.Pool) -> list:
    return [LiveProjectionRunner(settings, pool, p).run for p in ALL_PROJECTIONS]


async def wait_for_read_models(settings: Settings, pool: asyncpg.Pool) -> None:
    newest = (await store_event_ids(settings.database_url))[-1][0]

    async def reached() -> bool:
        async with pool.acquire() as conn:
            for p in ALL_PROJECTIONS:
                topics = tuple(settings.topic(t) for t in p.topics)
                if not await has_reached(conn, p.name, topics, newest):
                    return False
        return True

    await wait_until(reached, timeout=60)


# ---------------------------------------------------------------------------------- relay


async def test_relay_publishes_every_event_in_order_and_resumes(stack: Settings) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    busy_user(app, "ann")
    pool = await create_pool(stack, max_size=4)
    try:
        async with running(Relay(stack, pool).run):
            stored = await store_event_ids(stack.database_url)
            await wait_until(lambda: _reached(stack, stored[-1][0]))
        busy_user(app, "bob")  # written while no relay runs
        async with running(Relay(stack, pool).run):
            stored = await store_event_ids(stack.database_url)
            await wait_until(lambda: _reached(stack, stored[-1][0]))
        published = await consume_all(stack, len(stored))
    finally:
        await pool.close()
        app.close()
    assert {e.id for e in published} == {event_id for _, event_id in stored}
    assert len(published) == len(stored)  # a clean stop re-sends nothing
    by_aggregate: dict[uuid.UUID, list[int]] = {}
    for env in published:
        by_aggregate.setdefault(env.aggregate_id, []).append(env.version)
    assert all(v == sorted(v) for v in by_aggregate.values()), "an aggregate's events reordered"
    assert {e.type for e in published} >= {
        "CreditAccount.CreditsGranted",
        "CreditAccount.CreditsReserved",
        "CreditAccount.HoldSettled",
        "CreditAccount.HoldReleased",
        "CreditAccount.CreditsRefunded",
        "CreditAccount.LotExpired",
        "GenerationJob.Completed",
        "Subscription.TrialStarted",
    }


def busy_users(app: PinkseaApplication, users: list[str]) -> None:
    for user in users:
        busy_user(app, user, jobs=6)


async def _reached(settings: Settings, position: int) -> bool:
    return await relay_position(settings) >= position


async def test_relay_killed_mid_batch_loses_nothing_and_read_models_apply_once(
    stack: Settings,
) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    users = [f"user-{i}" for i in range(12)]
    writer = threading.Thread(target=busy_users, args=(app, users))
    writer.start()
    rng = random.Random(7)
    kills = 0
    while writer.is_alive() or kills < 3:
        proc = spawn(stack, "relay")
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    writer.join()
    stored = await store_event_ids(stack.database_url)
    pool = await create_pool(stack, max_size=6)
    try:
        async with running(Relay(stack, pool).run, *live_runners(stack, pool)):
            await wait_until(lambda: _reached(stack, stored[-1][0]), timeout=60)
            await wait_for_read_models(stack, pool)
        published = await consume_all(stack, len(stored))
        assert {e.id for e in published} == {event_id for _, event_id in stored}
        await assert_ledger_matches_aggregates(pool, app, users)
        duplicates = Counter(e.id for e in published)
        print(f"{kills} kills, {sum(c - 1 for c in duplicates.values())} re-sent events")
    finally:
        await pool.close()
        app.close()


async def test_kafka_down_for_30_seconds_loses_nothing(stack: Settings) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    pool = await create_pool(stack, max_size=4)
    kafka = [str(REPO / "infra/local/kafka.sh")]
    try:
        async with running(Relay(stack, pool).run):
            busy_user(app, "before")
            subprocess.run([*kafka, "stop"], check=True, capture_output=True)
            try:
                for i in range(10):  # commands keep arriving: they are in PostgreSQL
                    busy_user(app, f"during-{i}", jobs=2)
                await asyncio.sleep(30)
            finally:
                subprocess.run([*kafka, "start"], check=True, capture_output=True)
            stored = await store_event_ids(stack.database_url)
            await wait_until(lambda: _reached(stack, stored[-1][0]), timeout=90)
        published = await consume_all(stack, len(stored))
    finally:
        await pool.close()
        app.close()
    assert {e.id for e in published} == {event_id for _, event_id in stored}


async def test_tailing_relay_skips_no_event_under_concurrent_delayed_commits(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare_stack(stack)
    original = PostgresApplicationRecorder._fetch_ids_after_insert_events
    rng = random.Random(11)

    def delayed(self, *args, **kwargs):
        ids = original(self, *args, **kwargs)
        threading.Event().wait(rng.uniform(0, 0.004))  # hold the transaction open a while
        return ids

    monkeypatch.setattr(PostgresApplicationRecorder, "_fetch_ids_after_insert_events", delayed)
    app = new_app(stack)
    writers, jobs_each = 6, 600  # each submission stores 3 events: 6 x 600 x 3 > 10k

    def write(w: int) -> None:
        user = f"writer-{w}"
        app.register_user(user, T0)
        app.change_plan(
            user,
            to_plan="enterprise",
            actor="t",
            reason="t",
            at=T0,
            custom_terms={
                "credits_per_month": 1,
                "tier": "basic",
                "concurrent_jobs": 1000,
                "storage_gb": 1,
            },
        )
        app.adjust_credits(
            user, adjustment_id="bulk", amount_mc=10**9, reason="t", actor="t", at=T0
        )
        for i in range(jobs_each):
            app.submit_job(user, idempotency_key=f"{i}", params=TINY, at=T0)

    pool = await create_pool(stack, max_size=4)
    try:
        async with running(Relay(stack, pool, batch_size=200).run):
            threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                await asyncio.sleep(0.2)
            stored = await store_event_ids(stack.database_url)
            await wait_until(lambda: _reached(stack, stored[-1][0]), timeout=120)
        published = await consume_all(stack, len(stored), timeout=120)
    finally:
        await pool.close()
        app.close()
    assert len(stored) > 10_000
    assert {e.id for e in published} == {event_id for _, event_id in stored}
    assert sorted({e.position for e in published}) == [n for n, _ in stored]


# ----------------------------------------------------------------------------- projections


async def test_rebuilt_projection_equals_live_and_live_resumes_without_duplicates(
    stack: Settings,
) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    users = [f"u{i}" for i in range(5)]
    for u in users:
        busy_user(app, u, jobs=5)
    pool = await create_pool(stack, max_size=8)
    try:
        async with running(Relay(stack, pool).run, *live_runners(stack, pool)):
            await wait_for_read_models(stack, pool)
            live = await read_model_dump(pool)
            for projection in ALL_PROJECTIONS:
                result = await rebuild(stack, pool, projection, batch_size=50)
                assert result.events > 0
            rebuilt = await read_model_dump(pool)
            assert rebuilt == live, "a rebuild from the store differs from the live projection"
            # Image deletions are events too: the rebuilt images keep them (busy_user deletes the
            # image of each refunded job, two of five).
            deleted = await pool.fetchval(
                "SELECT count(*) FROM images WHERE deleted_at IS NOT NULL AND user_id = ANY($1)",
                users,
            )
            assert deleted == 2 * len(users)
            # After the hand-over, new events flow live exactly once.
            busy_user(app, "after-rebuild", jobs=4)
            await wait_for_read_models(stack, pool)
            await assert_ledger_matches_aggregates(pool, app, [*users, "after-rebuild"])
    finally:
        await pool.close()
        app.close()


async def test_projection_killed_mid_transaction_resumes_without_double_applying(
    stack: Settings,
) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    users = [f"k{i}" for i in range(10)]
    pool = await create_pool(stack, max_size=8)
    try:
        async with running(Relay(stack, pool).run):
            writer = threading.Thread(target=busy_users, args=(app, users))
            writer.start()
            rng = random.Random(3)
            for _ in range(4):
                proc = spawn(stack, "project")
                await asyncio.sleep(rng.uniform(1.5, 3.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            writer.join()
            async with running(*live_runners(stack, pool)):
                await wait_for_read_models(stack, pool)
            await assert_ledger_matches_aggregates(pool, app, users)
            live = await read_model_dump(pool)
            for projection in ALL_PROJECTIONS:
                await rebuild(stack, pool, projection)
            assert await read_model_dump(pool) == live
    finally:
        await pool.close()
        app.close()


async def test_read_your_writes_waits_for_the_projection(stack: Settings) -> None:
    await prepare_stack(stack)
    app = new_app(stack)
    app.register_user("reader", T0)
    job = app.submit_job("reader", idempotency_key="1", params=TINY, at=T0)
    pool = await create_pool(stack, max_size=6)
    ledger = next(p for p in ALL_PROJECTIONS if p.name == "ledger")
    topics = tuple(stack.topic(t) for t in ledger.topics)
    try:
        async with pool.acquire() as conn:
            assert not await has_reached(conn, "ledger", topics, job.position)
        async with running(Relay(stack, pool).run, *live_runners(stack, pool)):
            await wait_for_read_models(stack, pool)
            async with pool.acquire() as conn:
                assert await has_reached(conn, "ledger", topics, job.position)
            held = await pool.fetchval("SELECT held_mc FROM balances WHERE user_id = 'reader'")
            assert held == job.hold_mc
    finally:
        await pool.close()
        app.close()

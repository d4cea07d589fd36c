"""`ledger verify` catches planted corruption; `ledger export` round-trips with exact sums."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import duckdb
import pyarrow.parquet as pq
import pytest

from audit.store import ACCOUNT_EVENTS, stream_events
from domain.application import PinkseaApplication
from domain.subscription import CustomTerms
from eventstore.contract import envelope_for, topic_for
from infra.db import create_pool
from infra.settings import Settings
from projections.registry import ALL_PROJECTIONS
from projections.runner import apply_gated
from read_models.migrate import migrate
from tests.integration.streaming_kit import T0, TINY, busy_user, fresh_database, new_app

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
USERS = [f"audited-{i}" for i in range(4)]
RULED = "audited-ruled"  # the admin rules: a contract, a tester window, a deactivation


async def project_everything(app: PinkseaApplication, pool: asyncpg.Pool) -> None:
    """Fill the read models straight from the store (the same handlers the runners use)."""
    async with pool.acquire() as conn:
        await migrate(conn)
        for n in app.recorder.select_notifications(start=1, limit=100_000):
            env = envelope_for(app.mapper.to_domain_event(n), n.id)
            async with conn.transaction():
                for projection in ALL_PROJECTIONS:
                    if topic_for(env.type) in projection.topics and projection.wants(env):
                        await apply_gated(conn, projection, env)


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Settings]:
    with fresh_database(database_url) as url:
        settings = Settings(database_url=url)
        app = new_app(settings)
        for user in USERS:
            busy_user(app, user, jobs=6)
        ruled_user(app, RULED)
        pool = await create_pool(settings, max_size=4)
        try:
            await project_everything(app, pool)
        finally:
            await pool.close()
            app.close()
        yield settings


def ruled_user(app: PinkseaApplication, user: str, at: datetime = T0) -> None:
    """Every event of the admin rules: a contract's periods, a tester window that reverts, a
    deactivation that cancels a queued job, a reactivation."""
    app.register_user(user, at)
    terms: CustomTerms = {
        "credits_per_month": 100,
        "tier": "basic",
        "concurrent_jobs": 2,
        "storage_gb": 1,
    }
    app.change_plan(
        user, to_plan="enterprise", actor="admin", reason="deal", at=at, custom_terms=terms
    )
    app.grant_tester_plan(
        user,
        grant_id="beta",
        admin="admin",
        credits=5,
        valid_from=at,
        valid_until=at + timedelta(days=3),
        reason="beta",
        at=at,
    )
    app.end_tester_plan(user, at + timedelta(days=3))
    app.start_contract_period(user, at + timedelta(days=31))
    app.submit_job(user, idempotency_key="queued", params=TINY, at=at + timedelta(days=31))
    app.deactivate_user(user, reason="abuse", actor="admin", at=at + timedelta(days=32))
    app.reactivate_user(user, reason="appeal", actor="admin", at=at + timedelta(days=33))
    app.deactivate_user(user, reason="abuse again", actor="admin", at=at + timedelta(days=34))


def run_verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "ledger", "verify", "--database-url", settings.database_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


CORRUPTIONS = {
    "balances": "UPDATE balances SET available_mc = available_mc + 1 WHERE user_id = 'audited-1'",
    "credit_lots": "UPDATE credit_lots SET consumed_mc = consumed_mc - 7 "
    "WHERE lot_id = (SELECT lot_id FROM credit_lots ORDER BY lot_id LIMIT 1)",
    "postings": "UPDATE postings SET amount_mc = amount_mc + 1 "
    "WHERE (event_id, seq) = (SELECT event_id, seq FROM postings ORDER BY position DESC LIMIT 1)",
    "jobs": "UPDATE jobs SET status = 'completed' WHERE status = 'cancelled'",
    "usage_records": "DELETE FROM usage_records "
    "WHERE job_id = (SELECT job_id FROM usage_records LIMIT 1)",
    "user_subscriptions": "UPDATE user_subscriptions SET plan = 'studio' "
    "WHERE user_id = 'audited-2'",
    # A deletion lost (as a read-model-only write would be by a rebuild), and one made up.
    "images": "UPDATE images SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END "
    "WHERE name IN ((SELECT name FROM images WHERE deleted_at IS NULL LIMIT 1),"
    " (SELECT name FROM images WHERE deleted_at IS NOT NULL LIMIT 1))",
}


async def test_verify_passes_on_a_clean_ledger_and_catches_each_planted_corruption(
    ledger: Settings,
) -> None:
    clean = run_verify(ledger)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK" in clean.stdout
    conn = await asyncpg.connect(ledger.database_url)
    try:
        for table, corruption in CORRUPTIONS.items():
            await conn.execute(f"CREATE TEMP TABLE pristine AS SELECT * FROM {table}")
            changed = await conn.execute(corruption)
            assert not changed.endswith(" 0"), f"the corruption of {table} changed nothing"
            result = run_verify(ledger)
            assert result.returncode == 1, f"verify missed a corrupted {table}"
            assert f"{table} = replay" in result.stdout, result.stdout
            # Restore the table before planting the next corruption.
            await conn.execute(f"TRUNCATE {table}; INSERT INTO {table} SELECT * FROM pristine")
            await conn.execute("DROP TABLE pristine")
        assert run_verify(ledger).returncode == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("table", "corruption"),
    [
        ("balances", f"UPDATE balances SET deactivated = false WHERE user_id = '{RULED}'"),
        (
            "user_subscriptions",
            f"UPDATE user_subscriptions SET contract_period_end = NULL WHERE user_id = '{RULED}'",
        ),
        (
            "user_subscriptions",
            f"UPDATE user_subscriptions SET tester_until = now() WHERE user_id = '{RULED}'",
        ),
    ],
)
async def test_verify_accounts_for_the_admin_rules(
    ledger: Settings, table: str, corruption: str
) -> None:
    """A deactivation, a contract period or a tester window the read model lost is found."""
    assert run_verify(ledger).returncode == 0
    conn = await asyncpg.connect(ledger.database_url)
    try:
        assert not (await conn.execute(corruption)).endswith(" 0")
    finally:
        await conn.close()
    result = run_verify(ledger)
    assert result.returncode == 1 and f"{table} = replay" in result.stdout, result.stdout


def planted_copy(table: str, changes: str) -> str:
    """SQL that inserts a copy of one row of ``table`` with ``changes`` (a SET list): a row
    that no event explains."""
    return (
        f"CREATE TEMP TABLE planted AS SELECT * FROM {table} LIMIT 1; "
        f"UPDATE planted SET {changes}; INSERT INTO {table} SELECT * FROM planted"
    )


@pytest.mark.parametrize(
    ("check", "corruption"),
    [
        ("jobs = replay", planted_copy("jobs", "job_id = gen_random_uuid()")),
        ("images = replay", planted_copy("images", "name = 'planted.png'")),
        (
            "balances = replay",
            planted_copy("balances", "user_id = 'nobody', account_id = gen_random_uuid()"),
        ),
        # The lots of a user whose balances row is gone can no longer be placed: both are found.
        ("credit_lots = replay", "DELETE FROM balances WHERE user_id = 'audited-0'"),
        (
            "usage_records = replay",
            planted_copy("usage_records", "user_id = 'nobody', job_id = gen_random_uuid()"),
        ),
        ("postings = replay", "DELETE FROM postings WHERE seq = 2 AND user_id = 'audited-3'"),
        # A hold settled but its job read as still running: the join of the two aggregates.
        ("settled once", "UPDATE jobs SET status = 'completed' WHERE status = 'cancelled'"),
    ],
)
async def test_verify_finds_rows_no_event_explains_and_rows_missing(
    ledger: Settings, check: str, corruption: str
) -> None:
    """Streamed in aggregate order, every table is still compared both ways: a row too many
    (at any place in the key order) and a row too few are each a difference."""
    conn = await asyncpg.connect(ledger.database_url)
    try:
        changed = await conn.execute(corruption)  # the status of its last statement
        assert not changed.endswith(" 0"), f"{corruption} changed nothing"
    finally:
        await conn.close()
    result = run_verify(ledger)
    assert result.returncode == 1 and check in result.stdout, result.stdout


async def test_export_round_trips_through_pyarrow_and_duckdb_with_exact_sums(
    ledger: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "postings.parquet"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "ledger",
            "export",
            "--format",
            "parquet",
            "--out",
            str(out),
            "--database-url",
            ledger.database_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    conn = await asyncpg.connect(ledger.database_url)
    try:
        postings = await conn.fetch(
            "SELECT account, sum(amount_mc) AS total, count(*) AS n FROM postings GROUP BY account"
        )
        events = [e async for e in stream_events(conn, topics=(ACCOUNT_EVENTS,))]
    finally:
        await conn.close()
    expected = {r["account"]: r["total"] for r in postings}
    table = pq.read_table(out)
    assert table.num_rows == sum(r["n"] for r in postings) > 0
    by_account = table.group_by("account").aggregate([("amount_mc", "sum")]).to_pylist()
    assert {r["account"]: r["amount_mc_sum"] for r in by_account} == expected
    db = (
        duckdb.connect()
        .execute(f"SELECT sum(amount_mc) AS total, count(DISTINCT event_id) AS events FROM '{out}'")
        .fetchone()
    )
    assert db is not None and db[0] == 0
    settled = (
        duckdb.connect()
        .execute(
            f"SELECT sum(gpu_ms), min(rate_mc_per_ms) FROM '{out}' "
            "WHERE event_type = 'HoldSettled' AND account = 'revenue'"
        )
        .fetchone()
    )
    assert settled is not None and settled[1] == 1
    assert len(events) > 0

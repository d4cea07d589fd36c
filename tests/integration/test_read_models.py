"""Read models against the real PostgreSQL: real domain commands, their events as envelopes,
the projections applying them, and the tables and queries checked against the aggregates."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import ids
from domain.application import BillingState, PinkseaApplication
from domain.credits import LotSource
from domain.errors import DomainError
from domain.invoices import InvoiceLine, MoneyReturned
from domain.job_lifecycle import Fault
from domain.jobs import GenerationJob, ImageRecord, JobParameters
from domain.ledger_changes import LineKind
from domain.periods import add_months
from domain.plans import PLANS
from domain.postings import available, held
from domain.subscription import CustomTerms
from eventstore.contract import envelope_for, event_classes, topic_for
from eventstore.decoding import decode
from eventstore.envelope import Envelope
from projections.batching import StatementProjection
from projections.ledger import UnknownAccount, postings_for_envelope
from projections.registry import ALL_PROJECTIONS, get_projection
from read_models import queries
from read_models.migrate import migrate, migration_files
from read_models.queries import InvalidCursor

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
TINY = JobParameters(model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64)
FLUX = JobParameters(model="flux-schnell", prompt="a pink sea", steps=4, width=256, height=256)


# -------------------------------------------------------------------------------- harness


async def _fresh_schema(database_url: str) -> tuple[asyncpg.Connection, str]:
    schema = f"rm_{uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    await conn.execute(f"CREATE SCHEMA {schema}")
    return conn, schema


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh, migrated schema of its own."""
    conn, schema = await _fresh_schema(database_url)
    await migrate(conn)
    try:
        yield conn
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def new_app() -> PinkseaApplication:
    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def envelopes(app: PinkseaApplication, after: int = 0) -> list[Envelope]:
    """Every stored event after ``after``, as the relay would publish it."""
    out: list[Envelope] = []
    while True:
        page = app.recorder.select_notifications(start=after + 1, limit=1000)
        if not page:
            return out
        for n in page:
            out.append(envelope_for(decode(n), n.id))
        after = page[-1].id


def reads(projection: StatementProjection, env: Envelope) -> bool:
    return topic_for(env.type) in projection.topics and projection.wants(env)


async def project(conn: asyncpg.Connection, envs: Iterable[Envelope]) -> None:
    """Apply events one by one through every projection that reads their topic, in one
    transaction (as the live runner does)."""
    async with conn.transaction():
        for env in envs:
            for projection in ALL_PROJECTIONS:
                if reads(projection, env):
                    await projection.apply(conn, env)


async def project_batched(conn: asyncpg.Connection, envs: list[Envelope], size: int) -> None:
    """Apply events in batches of ``size``, each batch in one transaction (as a rebuild)."""
    for start in range(0, len(envs), size):
        async with conn.transaction():
            for projection in ALL_PROJECTIONS:
                chunk = [e for e in envs[start : start + size] if reads(projection, e)]
                await projection.apply_batch(conn, chunk)


def images_for(job_id: UUID, count: int, size: int = 1000) -> list[ImageRecord]:
    return [
        ImageRecord(
            name=f"{job_id}-{i}",
            key=f"users/u/images/{job_id}-{i}.png",
            thumbnail_key=f"users/u/images/{job_id}-{i}.webp",
            size_bytes=size + i,
            width=64,
            height=64,
        )
        for i in range(count)
    ]


def run_to_start(app: PinkseaApplication, job_id: UUID, at: datetime, attempt: int = 1) -> None:
    app.record_dispatch(job_id, attempt=attempt, worker_id="w1", at=at)
    app.record_start(job_id, attempt=attempt, worker_id="w1", gpu="T4", at=at)


# ---------------------------------------------------------------------- state comparisons


async def assert_ledger_matches(
    conn: asyncpg.Connection, app: PinkseaApplication, user: str, envs: list[Envelope]
) -> None:
    account = app.account(user)
    balance = await conn.fetchrow("SELECT * FROM balances WHERE user_id = $1", user)
    assert balance is not None
    assert balance["account_id"] == account.id
    assert balance["available_mc"] == sum(lot.remaining_mc for lot in account.lots.values())
    assert balance["held_mc"] == account.held_mc
    assert balance["lot_count"] == len(account.lots)
    assert balance["low_balance"] == account.low_balance
    assert balance["granted_mc"] + balance["refunded_mc"] == (
        balance["available_mc"]
        + balance["held_mc"]
        + balance["consumed_mc"]
        + balance["expired_mc"]
        + balance["debited_mc"]
    )
    assert balance["consumed_mc"] == sum(lot.consumed_mc for lot in account.lots.values())
    assert balance["expired_mc"] == sum(lot.expired_mc for lot in account.lots.values())
    assert balance["debited_mc"] == sum(lot.debited_mc for lot in account.lots.values())

    # Every lot, field by field.
    rows = await conn.fetch("SELECT * FROM credit_lots WHERE user_id = $1", user)
    assert {r["lot_id"] for r in rows} == set(account.lots)
    for row in rows:
        lot = account.lots[row["lot_id"]]
        for field in dataclasses.fields(lot):
            assert row[field.name] == getattr(lot, field.name), (row["lot_id"], field.name)

    # Postings: balanced per event, and the user's accounts equal the balance.
    postings = await conn.fetch("SELECT * FROM postings WHERE user_id = $1", user)
    per_event: dict[str, int] = defaultdict(int)
    per_account: dict[str, int] = defaultdict(int)
    for p in postings:
        per_event[p["event_id"]] += p["amount_mc"]
        per_account[p["account"]] += p["amount_mc"]
    assert all(total == 0 for total in per_event.values())
    assert per_account[available(user)] == balance["available_mc"]
    assert per_account[held(user)] == balance["held_mc"]
    # ... and they are exactly the domain's postings of the user's credit events.
    credit_envs = [e for e in envs if e.aggregate_id == account.id and e.name != "Opened"]
    expected = [
        (e.id, seq, p.account, p.amount_mc, p.lot_id)
        for e in credit_envs
        for seq, p in enumerate(postings_for_envelope(user, e), start=1)
    ]
    got = sorted(
        (p["event_id"], p["seq"], p["account"], p["amount_mc"], p["lot_id"]) for p in postings
    )
    assert got == sorted(expected)

    # Statement: a line per money-moving event, running balances consistent to the end.
    lines = await conn.fetch(
        "SELECT * FROM credit_transactions WHERE user_id = $1 ORDER BY position", user
    )
    assert [r["event_id"] for r in lines] == [
        e.id for e in credit_envs if postings_for_envelope(user, e)
    ]
    running_available = running_held = 0
    for line in lines:
        running_available += line["amount_mc"]
        running_held += line["held_change_mc"]
        assert line["available_after_mc"] == running_available
        assert line["held_after_mc"] == running_held
        assert line["description"]
    assert (running_available, running_held) == (balance["available_mc"], balance["held_mc"])


async def assert_jobs_match(
    conn: asyncpg.Connection, app: PinkseaApplication, job_ids: Iterable[UUID]
) -> None:
    for job_id in job_ids:
        job = app.job(job_id)
        row = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
        assert row is not None
        assert row["user_id"] == job.user_id
        assert row["status"] == job.status
        assert row["hold_mc"] == job.hold_mc
        assert row["budget_ms"] == job.budget_ms
        assert row["attempt"] == job.attempt
        assert row["gpu_ms"] == job.gpu_ms
        assert row["cuda_ms"] == job.cuda_ms
        assert row["charged_mc"] == job.charged_mc
        assert row["refunded_mc"] == job.refunded_mc
        assert row["cancel_requested"] == job.cancel_requested
        assert row["rejection_reason"] == job.rejection
        assert row["failure_reason"] == job.failure
        assert json.loads(row["parameters"]) == job.parameters
        assert row["hold_id"] == (job.hold_id if job.hold_mc else None)
        images = await conn.fetch("SELECT * FROM images WHERE job_id = $1 ORDER BY idx", job_id)
        assert [i["name"] for i in images] == [i["name"] for i in job.images]
        assert {i["name"]: i["deleted_at"] for i in images if i["deleted_at"]} == job.deleted_images
        assert row["image_count"] == len(job.images)


async def assert_usage_matches(
    conn: asyncpg.Connection, app: PinkseaApplication, user: str, envs: list[Envelope]
) -> None:
    """One usage record per settled hold, with the job's measured and charged figures."""
    account = app.account(user)
    settled = {
        e.data["job_id"]: e.data["charged_mc"]
        for e in envs
        if e.aggregate_id == account.id and e.name == "HoldSettled"
    }
    rows = await conn.fetch("SELECT * FROM usage_records WHERE user_id = $1", user)
    assert {str(r["job_id"]) for r in rows} == set(settled)
    for row in rows:
        job = app.job(row["job_id"])
        assert row["charged_mc"] == settled[str(row["job_id"])] == job.charged_mc
        assert row["gpu_ms"] == job.gpu_ms
        assert row["refunded_mc"] == job.refunded_mc
        assert row["outcome"] == job.status
        assert (row["model"], row["tier"], row["steps"]) == (
            job.parameters["model"],
            job.tier,
            job.parameters["steps"],
        )


async def assert_subscription_matches(
    conn: asyncpg.Connection, app: PinkseaApplication, user: str
) -> None:
    sub = app.subscription(user)
    row = await conn.fetchrow("SELECT * FROM user_subscriptions WHERE user_id = $1", user)
    assert row is not None
    assert row["subscription_id"] == sub.id
    assert (row["plan"], row["status"]) == (sub.plan_slug, sub.status)
    assert (row["period_start"], row["period_end"]) == (sub.period_start, sub.period_end)
    assert row["cancel_at"] == sub.cancel_at
    assert row["external_id"] == sub.external_id
    assert row["customer_id"] == sub.customer_id
    assert row["stripe_synced_at"] == sub.stripe_synced_at
    terms = row["custom_terms"]
    assert (None if terms is None else json.loads(terms)) == sub.custom_terms
    user_row = await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", user)
    assert user_row is not None
    assert (user_row["plan"], user_row["subscription_status"]) == (sub.plan.slug, sub.status)


async def dump(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for projection in ALL_PROJECTIONS:
        for table in projection.tables:
            rows = await conn.fetch(f"SELECT * FROM {table}")
            out[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return out


async def walk(fetch_page: Any, limit: int) -> list[Any]:
    """Follow next_cursor from the first page to the last; returns every item."""
    items: list[Any] = []
    cursor = None
    while True:
        page = await fetch_page(cursor, limit)
        assert len(page.items) <= limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        assert len(page.items) == limit
        cursor = page.next_cursor


# ------------------------------------------------------------------------------ scenario


class Story:
    """A small world built from real commands: alice pays for pro and runs jobs of every
    outcome, bob is a tester, carol churns, erin has an enterprise contract."""

    alice, bob, carol, erin = "alice", "bob", "carol", "erin"
    users = (alice, bob, carol, erin)

    def __init__(self) -> None:
        self.app = app = new_app()
        self.jobs: dict[str, UUID] = {}
        for user in self.users:
            app.register_user(user, T0)

        # alice: pro from day 0 (period longer than the trial), a never-expiring purchase.
        app.start_subscription(
            "alice", plan="pro", external_id="sub_alice", period_start=T0,
            period_end=T0 + 40 * DAY, at=T0,
        )  # fmt: skip
        app.renew_period(
            "alice", invoice_id="in_alice_1", period_start=T0, period_end=T0 + 40 * DAY, at=T0
        )
        app.link_stripe_customer("alice", "cus_alice", T0)
        # A Stripe invoice credited by its lines, and part of its money given back.
        app.credit_invoice(
            "alice", invoice_id="in_alice_up", customer_id="cus_alice", external_id="sub_alice",
            lines=[InvoiceLine(plan="pro", amount_cents=750, proration=True, period_start=T0,
                               period_end=T0 + 40 * DAY)], at=T0,
        )  # fmt: skip
        app.return_invoice_money(
            "alice", invoice_id="in_alice_up", customer_id="cus_alice", source_id="cn_alice",
            by_charge=False, returned=MoneyReturned(kept_cents=250, refund_cents=0), at=T0,
        )  # fmt: skip
        # A credit note of an invoice not paid yet, voided: nothing moves.
        app.void_credit_note(
            "alice", invoice_id="in_alice_open", note_id="cn_alice_void", at=T0,
            customer_id="cus_alice",
        )  # fmt: skip
        app.grant_credits(
            "alice", grant_id="pack-1", source=LotSource.PURCHASE, amount_mc=20_000,
            valid_from=T0, valid_until=None, actor="stripe", reason="credit pack", at=T0,
        )  # fmt: skip
        t = T0 + timedelta(hours=1)
        self.complete(self.started("alice", "completed", t), 700, t, images=2, cuda_ms=650)
        app.cancel_job(self.submit("alice", "cancelled-early", t), t)
        self.fail(self.started("alice", "user-fault", t), Fault.USER, 300, t)
        self.fail(self.started("alice", "platform-fault", t), Fault.PLATFORM, 200, t)
        retried = self.started("alice", "retried", t)
        self.fail(retried, Fault.PLATFORM, 0, t, retryable=True)
        run_to_start(app, retried, t, attempt=2)
        self.complete(retried, 800, t, images=1, attempt=2)
        app.refund_job(retried, reason="blurry", actor="support", at=t)
        stopped = self.started("alice", "cancelled-running", t)
        app.cancel_job(stopped, t)
        app.record_cancelled_run(stopped, attempt=1, gpu_ms=400, at=t)
        capped = self.started("alice", "over-budget", t)
        self.complete(capped, app.job(capped).budget_ms + 5000, t, images=1)
        app.delete_image(capped, user_id="alice", name=f"{capped}-0", at=t + timedelta(minutes=5))
        self.submit("alice", "pending", t)  # stays accepted: its hold stays open
        for adjustment, mc in (("goodwill", 3_000), ("fix", -1_000)):
            app.adjust_credits(
                "alice", adjustment_id=adjustment, amount_mc=mc, reason="ops", actor="ops", at=t
            )

        # A hold open while its (trial) lot expires; a refund after its lot expired.
        late, expiry = T0 + 29 * DAY, T0 + 31 * DAY
        across = self.submit("alice", "across-expiry", late)
        refunded_late = self.started("alice", "refund-after-expiry", late)
        self.complete(refunded_late, 500, late)
        app.expire_due("alice", expiry)
        run_to_start(app, across, expiry)
        self.complete(across, 100, expiry, images=1, cuda_ms=90)
        app.refund_job(refunded_late, reason="late", actor="support", at=expiry + DAY)

        # bob: tester plan with credits and a flux job, a second grant, a job too big.
        for grant, credits, start, days in (("beta-1", 100, T0, 60), ("beta-2", 50, T0 + DAY, 89)):
            app.grant_tester_plan(
                "bob", grant_id=grant, admin="admin@pinksea", credits=credits,
                valid_from=start, valid_until=start + days * DAY, reason="beta", at=start,
            )  # fmt: skip
        flux_job = self.started("bob", "bob-flux", T0 + DAY, FLUX)
        self.complete(flux_job, 1500, T0 + DAY, images=1, size=5000)
        # bob files the image on a board (Board events and the job's ImageFiled).
        board = app.create_board("bob", request_key="bob-board", name="seas", at=T0 + DAY)
        app.add_board_image("bob", board.board_id, image_name=f"{flux_job}-0", at=T0 + DAY)
        # bob stars it and marks it intermediate, makes it a result again, takes the star off
        # and puts it back (GenerationJob.ImageStarred, ImageUnstarred, ImageMarkedIntermediate,
        # ImageUnmarkedIntermediate).
        for flags in (
            {"starred": True, "is_intermediate": True},
            {"is_intermediate": False},
            {"starred": False},
            {"starred": True},
        ):
            app.flag_image(flux_job, user_id="bob", name=f"{flux_job}-0", at=T0 + DAY, **flags)
        huge = FLUX.model_copy(update=dict(steps=150, width=2048, height=2048, batch_size=8))
        assert self.refuse("bob", "bob-too-big", T0 + DAY, huge) == "insufficient_credits"
        # A rejection saved as a job, as submissions did before refusals were answered
        # unsaved: stored history the projections still apply.
        before = GenerationJob.submit(
            user_id="bob", idempotency_key="bob-rejected-before", params=huge,
            tier=app.subscription("bob").plan.tier.value, at=T0 + DAY,
        )  # fmt: skip
        before._rejected(reason="insufficient_credits", detail="too big", timestamp=T0 + DAY)
        app.save(before)
        self.jobs["bob-rejected-before"] = before.id
        # bob fell below the tester plan's low-balance threshold; a large grant clears it.
        app.grant_credits(
            "bob", grant_id="big", source=LotSource.ADMIN, amount_mc=10_000_000, valid_from=T0,
            valid_until=None, actor="admin@pinksea", reason="more", at=T0 + 2 * DAY,
        )  # fmt: skip

        # carol: starter, a failed payment, cancellation scheduled, revoked, then the end.
        app.start_subscription(
            "carol", plan="starter", external_id="sub_carol", period_start=T0,
            period_end=T0 + 30 * DAY, at=T0,
        )  # fmt: skip
        app.record_payment_failed("carol", invoice_id="in_carol_1", at=T0 + DAY)
        assert self.refuse("carol", "carol-past-due", T0 + DAY, TINY) == "payment_failed"
        app.schedule_cancellation("carol", T0 + 2 * DAY)
        app.revoke_cancellation("carol", T0 + 3 * DAY)
        app.sync_stripe_subscription(
            "carol", external_id="sub_carol", plan="starter", state=BillingState.RUNNING,
            period_start=T0,
            period_end=T0 + 30 * DAY, cancel_at_period_end=True, object_at=T0 + 4 * DAY,
            at=T0 + 4 * DAY,
        )  # fmt: skip
        app.end_subscription("carol", reason="cancelled", at=T0 + 30 * DAY)

        # erin: an enterprise contract (a period at once, the next a month on) with a tester
        # window inside that reverts; deactivated (her queued job cancelled), then reactivated.
        terms: CustomTerms = {"credits_per_month": 2_000, "tier": "dedicated", "concurrent_jobs": 2,
                 "storage_gb": 10}  # fmt: skip
        app.change_plan(
            "erin", to_plan="enterprise", actor="admin@pinksea", reason="deal", at=T0,
            custom_terms=terms,
        )  # fmt: skip
        app.grant_tester_plan(
            "erin", grant_id="erin-beta", admin="admin@pinksea", credits=10,
            valid_from=T0 + DAY, valid_until=T0 + 10 * DAY, reason="beta", at=T0 + DAY,
        )  # fmt: skip
        app.end_tester_plan("erin", T0 + 10 * DAY)
        app.start_contract_period("erin", add_months(T0, 1))
        self.submit("erin", "erin-queued", add_months(T0, 1))
        app.deactivate_user("erin", reason="abuse", actor="admin@pinksea", at=T0 + 32 * DAY)
        app.reactivate_user("erin", reason="appeal", actor="admin@pinksea", at=T0 + 33 * DAY)

        self.envs = envelopes(app)

    def submit(self, user: str, key: str, at: datetime, params: JobParameters = TINY) -> UUID:
        result = self.app.submit_job(user, idempotency_key=key, params=params, at=at)
        assert result.job_id is not None, result.detail
        self.jobs[key] = result.job_id
        return result.job_id

    def refuse(self, user: str, key: str, at: datetime, params: JobParameters) -> str | None:
        """A submission admission refuses: answered, nothing saved (no job to read back)."""
        result = self.app.submit_job(user, idempotency_key=key, params=params, at=at)
        assert result.job_id is None
        return result.rejection

    def started(self, user: str, key: str, at: datetime, params: JobParameters = TINY) -> UUID:
        job_id = self.submit(user, key, at, params)
        run_to_start(self.app, job_id, at)
        return job_id

    def complete(
        self,
        job_id: UUID,
        gpu_ms: int,
        at: datetime,
        *,
        images: int = 0,
        size: int = 1000,
        cuda_ms: int | None = None,
        attempt: int = 1,
    ) -> None:
        self.app.complete_job(
            job_id, attempt=attempt, gpu_ms=gpu_ms, cuda_ms=cuda_ms,
            images=images_for(job_id, images, size), at=at,
        )  # fmt: skip

    def fail(
        self, job_id: UUID, fault: Fault, gpu_ms: int, at: datetime, *, retryable: bool = False
    ) -> None:
        self.app.fail_job(
            job_id, attempt=1, reason=f"{fault} failure", retryable=retryable, fault=fault,
            gpu_ms=gpu_ms, at=at,
        )  # fmt: skip


@pytest.fixture(scope="module")
def story() -> Story:
    return Story()


# ---------------------------------------------------------------------------------- tests


async def test_migrations_apply_once_and_concurrently(database_url: str) -> None:
    first, schema = await _fresh_schema(database_url)
    second = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        applied = await asyncio.gather(migrate(first), migrate(second))
        names = [p.name for p in migration_files()]
        assert "0002_read_models.sql" in names
        assert sorted(applied[0] + applied[1]) == names  # each applied by exactly one
        assert await migrate(first) == []
        recorded = await first.fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in recorded] == names
    finally:
        await first.execute(f"DROP SCHEMA {schema} CASCADE")
        await first.close()
        await second.close()


async def test_failed_migration_leaves_nothing(database_url: str, tmp_path: Path) -> None:
    conn, schema = await _fresh_schema(database_url)
    try:
        (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id INT);")
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id INT); SELECT nope;")
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        recorded = await conn.fetch("SELECT name FROM schema_migrations")
        assert [r["name"] for r in recorded] == ["0001_ok.sql"]
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_seeded_plans_equal_the_domain_plan_table(db: asyncpg.Connection) -> None:
    plans = await queries.list_plans(db)
    assert [p.slug for p in plans] == list(PLANS)
    for plan in plans:
        domain_plan = PLANS[plan.slug]
        for field in dataclasses.fields(plan):
            expected = getattr(domain_plan, field.name)
            if isinstance(expected, Decimal):
                assert plan.usd_per_month == expected
            else:
                assert getattr(plan, field.name) == expected, (plan.slug, field.name)


async def test_read_models_equal_the_aggregates(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    for user in story.users:
        await assert_ledger_matches(db, story.app, user, story.envs)
        await assert_usage_matches(db, story.app, user, story.envs)
        await assert_subscription_matches(db, story.app, user)
    await assert_jobs_match(db, story.app, story.jobs.values())
    assert await db.fetchval("SELECT sum(amount_mc) FROM postings") == 0

    # The scenario really covered what it meant to.
    kinds = {r["kind"] for r in await db.fetch("SELECT DISTINCT kind FROM credit_transactions")}
    assert kinds == set(LineKind)  # the statement vocabulary (domain.ledger_changes)
    deleted = await db.fetch("SELECT name, deleted_at FROM images WHERE deleted_at IS NOT NULL")
    capped_job = story.jobs["over-budget"]
    assert [(r["name"], r["deleted_at"]) for r in deleted] == [
        (f"{capped_job}-0", story.app.job(capped_job).deleted_images[f"{capped_job}-0"])
    ]
    flagged = await db.fetch(
        "SELECT name, starred, is_intermediate, image_category, image_origin FROM images"
        " WHERE starred OR is_intermediate"
    )
    assert [tuple(r) for r in flagged] == [
        (f"{story.jobs['bob-flux']}-0", True, False, "general", "internal")
    ]
    statuses = await db.fetch("SELECT job_id, status FROM jobs WHERE user_id = 'alice'")
    assert {r["status"] for r in statuses} == {"completed", "cancelled", "failed", "accepted"}
    usage = {r["job_id"]: r for r in await db.fetch("SELECT * FROM usage_records")}
    assert story.jobs["platform-fault"] not in usage
    assert story.jobs["cancelled-early"] not in usage
    assert usage[story.jobs["cancelled-running"]]["outcome"] == "cancelled"
    assert usage[story.jobs["user-fault"]]["outcome"] == "failed"
    capped = usage[story.jobs["over-budget"]]
    assert capped["charged_mc"] == story.app.job(story.jobs["over-budget"]).budget_ms
    assert capped["gpu_ms"] > capped["charged_mc"]  # measured, though billed at the budget
    sources = await db.fetch("SELECT DISTINCT source FROM credit_lots WHERE user_id = 'alice'")
    assert {r["source"] for r in sources} == {
        "trial",
        "subscription",
        "purchase",
        "admin",
        "refund",
    }
    expired_in_hold = await db.fetchval(
        "SELECT count(*) FROM credit_transactions WHERE kind = 'settle' AND job_id = $1"
        " AND description LIKE '%expired with their lot%'",
        str(story.jobs["across-expiry"]),
    )
    assert expired_in_hold == 1

    grants = await db.fetch(
        "SELECT * FROM test_plan_grants WHERE user_id = 'bob' ORDER BY position"
    )
    assert [(g["kind"], g["grant_id"], g["amount_mc"]) for g in grants] == [
        ("plan", None, None),
        ("credits", "beta-1", 100_000),
        ("credits", "beta-2", 50_000),
    ]
    assert {(g["actor"], g["from_plan"]) for g in grants[:1]} == {("admin@pinksea", "trial")}
    assert grants[2]["valid_until"] == T0 + 90 * DAY
    others = "SELECT count(*) FROM test_plan_grants WHERE user_id NOT IN ('bob', 'erin')"
    assert await db.fetchval(others) == 0

    # erin's contract: two periods granted, the tester window reverted, reactivated.
    erin = await db.fetchrow("SELECT * FROM user_subscriptions WHERE user_id = 'erin'")
    assert (erin["plan"], erin["tester_until"], erin["contract_period_end"]) == (
        "enterprise",
        None,
        add_months(T0, 2),
    )
    contract = await db.fetch(
        "SELECT valid_from FROM credit_lots WHERE user_id = 'erin' AND source = 'contract'"
        " ORDER BY seq"
    )
    assert [r["valid_from"] for r in contract] == [T0, add_months(T0, 1)]
    status = await db.fetchrow("SELECT * FROM balances WHERE user_id = 'erin'")
    assert (status["deactivated"], status["status_reason"]) == (False, "appeal")


async def test_rebuild_is_deterministic_batched_and_topic_order_independent(
    database_url: str, db: asyncpg.Connection, story: Story
) -> None:
    """Replaying the same events gives identical rows, whether applied one by one, in pipelined
    batches of any size, or each topic on its own (Kafka orders a partition, not topics)."""
    await project(db, story.envs)
    expected = await dump(db)
    credits_first = sorted(
        story.envs, key=lambda e: (topic_for(e.type) != "pinksea.credits.v1", e.position)
    )
    replays: list[tuple[str, Callable[[asyncpg.Connection], Awaitable[None]]]] = [
        ("by topic", lambda conn: project(conn, credits_first)),
        ("batches of 1", lambda conn: project_batched(conn, story.envs, 1)),
        ("batches of 13", lambda conn: project_batched(conn, story.envs, 13)),
        ("one batch", lambda conn: project_batched(conn, story.envs, 10_000)),
    ]
    for label, replay in replays:
        other, schema = await _fresh_schema(database_url)
        try:
            await migrate(other)
            await replay(other)
            assert await dump(other) == expected, label
        finally:
            await other.execute(f"DROP SCHEMA {schema} CASCADE")
            await other.close()


async def test_balance_query_equals_the_account(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    for user in story.users:
        account = story.app.account(user)
        for at in (T0, T0 + DAY, T0 + 30 * DAY, T0 + 45 * DAY, T0 + 100 * DAY):
            balance = await queries.get_balance(db, user, at=at)
            assert balance is not None
            assert balance.spendable_mc == account.available_mc(at)
            assert balance.available_mc == sum(lot.remaining_mc for lot in account.lots.values())
            assert balance.held_mc == account.held_mc
            # Lots in the aggregate's spend order.
            spend_order = [
                lot.lot_id
                for lot in sorted(account.lots.values(), key=lambda lot: lot.spend_order_key())
            ]
            assert [lot.lot_id for lot in balance.lots] == spend_order
            spendable = {lot.lot_id for lot in account.spendable_lots(at)}
            assert {
                lot.lot_id for lot in balance.lots if lot.spendable and lot.remaining_mc
            } == spendable
    assert await queries.get_balance(db, "nobody") is None


async def test_pagination_walks_every_row_once(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    alice = story.alice

    expected_lines = await db.fetch(
        "SELECT event_id FROM credit_transactions WHERE user_id = $1 ORDER BY position DESC",
        alice,
    )
    for limit in (1, 3, 7, 100):
        lines = await walk(lambda c, n: queries.list_ledger(db, alice, c, n), limit)
        assert [e.event_id for e in lines] == [r["event_id"] for r in expected_lines]

    expected_jobs = await db.fetch(
        "SELECT job_id FROM jobs WHERE user_id = $1 ORDER BY submitted_position DESC", alice
    )
    for limit in (1, 2, 5):
        jobs = await walk(lambda c, n: queries.list_jobs(db, alice, None, c, n), limit)
        assert [j.job_id for j in jobs] == [r["job_id"] for r in expected_jobs]
    completed = await walk(lambda c, n: queries.list_jobs(db, alice, "completed", c, n), 2)
    assert {j.job_id for j in completed} == {
        story.jobs[k]
        for k in ("completed", "retried", "over-budget", "across-expiry", "refund-after-expiry")
    }
    assert all(j.status == "completed" for j in completed)

    expected_images = await db.fetch(
        "SELECT name FROM images WHERE user_id = $1 AND deleted_at IS NULL"
        " ORDER BY position DESC, idx DESC",
        alice,
    )
    assert len(expected_images) == 4  # of 5: the over-budget job's image was deleted
    for limit in (1, 2, 4):
        images = await walk(lambda c, n: queries.list_images(db, alice, c, n), limit)
        assert [i.name for i in images] == [r["name"] for r in expected_images]

    # The default page, and limits outside 1..100.
    assert len((await queries.list_ledger(db, alice)).items) == queries.DEFAULT_LIMIT
    for bad in (0, 101):
        with pytest.raises(ValueError):
            await queries.list_ledger(db, alice, None, bad)
    with pytest.raises(ValueError):
        await queries.list_jobs(db, alice, "exploded")


async def test_cursors_are_opaque_and_checked(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    page = await queries.list_jobs(db, story.alice, limit=1)
    assert page.next_cursor is not None
    for bad in ("not base64!", base64.urlsafe_b64encode(b"[1]").decode(), page.next_cursor[:-2]):
        with pytest.raises(InvalidCursor):
            await queries.list_jobs(db, story.alice, cursor=bad)
    with pytest.raises(InvalidCursor):  # a jobs cursor is not an images cursor
        await queries.list_images(db, story.alice, cursor=page.next_cursor)


async def test_tenant_isolation(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    alice_job = story.jobs["completed"]
    alice_image = f"{alice_job}-0"
    assert (await queries.get_job(db, story.alice, alice_job)) is not None
    assert (await queries.get_image(db, story.alice, alice_image)) is not None

    assert await queries.get_job(db, story.bob, alice_job) is None
    assert await queries.get_job(db, story.bob, str(alice_job)) is None
    assert await queries.get_job(db, story.bob, "not-a-uuid") is None
    assert await queries.get_image(db, story.bob, alice_image) is None
    bob_lines = await walk(lambda c, n: queries.list_ledger(db, story.bob, c, n), 100)
    alice_account = str(story.app.account(story.alice).id)
    assert bob_lines and not any(e.event_id.startswith(alice_account) for e in bob_lines)
    bob_jobs = await walk(lambda c, n: queries.list_jobs(db, story.bob, None, c, n), 100)
    bobs = {story.jobs["bob-flux"], story.jobs["bob-rejected-before"]}
    assert {j.job_id for j in bob_jobs} == bobs  # bob-too-big was refused: no job
    bob_images = await walk(lambda c, n: queries.list_images(db, story.bob, c, n), 100)
    assert [i.name for i in bob_images] == [f"{story.jobs['bob-flux']}-0"]
    # Another user's cursor shows nothing of theirs: the cursor is only a sort key.
    alice_page = await queries.list_jobs(db, story.alice, limit=1)
    assert alice_page.next_cursor is not None
    assert all(
        j.job_id in bobs
        for j in (await queries.list_jobs(db, story.bob, cursor=alice_page.next_cursor)).items
    )


async def test_job_image_and_storage_queries(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    job_id = story.jobs["completed"]
    job = await queries.get_job(db, story.alice, job_id)
    assert job is not None
    aggregate = story.app.job(job_id)
    assert (job.status, job.gpu_ms, job.cuda_ms, job.charged_mc) == (
        "completed",
        700,
        650,
        aggregate.charged_mc,
    )
    assert job.parameters.as_event_data() == aggregate.parameters
    assert [i.name for i in job.images] == [i["name"] for i in aggregate.images]
    assert [i.index for i in job.images] == [0, 1]
    image = await queries.get_image(db, story.alice, f"{job_id}-1")
    assert image is not None
    assert (image.key, image.size_bytes, image.job_id) == (
        f"users/u/images/{job_id}-1.png",
        1001,
        job_id,
    )
    assert await queries.get_job(db, story.bob, ids.job_id(story.bob, "bob-too-big")) is None
    rejected = await queries.get_job(db, story.bob, story.jobs["bob-rejected-before"])
    assert rejected is not None and rejected.rejection_reason == "insufficient_credits"

    all_images = [
        i
        for j in story.jobs.values()
        for i in story.app.job(j).images
        if i["name"] not in story.app.job(j).deleted_images
    ]
    alice_bytes = sum(
        i["size_bytes"]
        for i in all_images
        if story.app.job(UUID(i["name"][:36])).user_id == "alice"
    )
    assert await queries.storage_used_bytes(db, story.alice) == alice_bytes
    await db.execute("UPDATE images SET deleted_at = $1 WHERE name = $2", T0, f"{job_id}-1")
    assert await queries.storage_used_bytes(db, story.alice) == alice_bytes - 1001
    assert await queries.get_image(db, story.alice, f"{job_id}-1") is None
    assert await queries.storage_used_bytes(db, "nobody") == 0


async def test_usage_summary(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    by_day = await queries.usage_summary(db, story.alice, T0, T0 + 60 * DAY, "day")
    rows = await db.fetch("SELECT * FROM usage_records WHERE user_id = 'alice'")
    assert by_day.jobs == len(rows) == 7
    assert by_day.charged_mc == sum(r["charged_mc"] for r in rows)
    assert by_day.refunded_mc == sum(r["refunded_mc"] for r in rows) > 0
    assert [b.key for b in by_day.buckets] == ["2026-05-01", "2026-05-30", "2026-06-01"]
    by_model = await queries.usage_summary(db, story.alice, T0, T0 + 60 * DAY, "model")
    assert [(b.key, b.jobs) for b in by_model.buckets] == [("tiny-sd", 7)]
    first_day = await queries.usage_summary(db, story.alice, T0, T0 + DAY)
    assert first_day.jobs == 5
    bob = await queries.usage_summary(db, story.bob, T0, T0 + 60 * DAY, "model")
    assert [(b.key, b.gpu_ms, b.charged_mc) for b in bob.buckets] == [("flux-schnell", 1500, 1500)]
    with pytest.raises(ValueError):
        await queries.usage_summary(db, story.alice, T0, T0 + DAY, "week")


async def test_user_queries_and_admin_search(db: asyncpg.Connection, story: Story) -> None:
    await project(db, story.envs)
    alice = await queries.get_user(db, story.alice)
    assert alice is not None
    assert (alice.plan.slug, alice.subscription.status) == ("pro", "active")
    assert alice.subscription.external_id == "sub_alice"
    bob = await queries.get_user(db, story.bob)
    assert bob is not None and bob.plan.slug == "tester"
    carol = await queries.get_user(db, story.carol)
    assert carol is not None
    # Ended: trial entitlements, the subscribed plan kept for the record.
    assert (carol.plan.slug, carol.subscription.plan, carol.subscription.status) == (
        "trial",
        "starter",
        "ended",
    )
    assert await queries.get_user(db, "nobody") is None

    everyone = await walk(lambda c, n: queries.search_users(db, "", c, n), 1)
    assert [u.user_id for u in everyone] == ["alice", "bob", "carol", "erin"]
    assert [u.user_id for u in (await queries.search_users(db, "AR")).items] == ["carol"]
    # Wildcards and quotes are data, not syntax.
    for hostile in ("%", "_", "'; DROP TABLE users; --", "\\"):
        assert (await queries.search_users(db, hostile)).items == ()
    assert await db.fetchval("SELECT count(*) FROM users") == 4


async def test_unknown_aggregates_fail_loudly(db: asyncpg.Connection) -> None:
    """An event whose aggregate's first event was never projected stops the projection rather
    than being dropped."""
    app = new_app()
    app.register_user("dave", T0)
    app.grant_credits(
        "dave",
        grant_id="g",
        source=LotSource.ADMIN,
        amount_mc=5,
        valid_from=T0,
        valid_until=None,
        actor="a",
        reason="r",
        at=T0,
    )
    result = app.submit_job("dave", idempotency_key="k", params=TINY, at=T0)
    envs = envelopes(app)
    grant = next(
        e for e in envs if e.type == "CreditAccount.CreditsGranted" and e.data["reference"] == "g"
    )
    accepted = next(e for e in envs if e.type == "GenerationJob.Accepted")
    assert accepted.aggregate_id == result.job_id
    for apply in (project, lambda conn, envs: project_batched(conn, envs, 10)):
        with pytest.raises(UnknownAccount, match="never opened"):
            await apply(db, [grant])
        with pytest.raises(asyncpg.DataError, match="never submitted"):
            await apply(db, [accepted])
    # A lot never granted: the statement checks every lot it moves.
    opened = next(e for e in envs if e.type == "CreditAccount.Opened")
    reserved = next(e for e in envs if e.type == "CreditAccount.CreditsReserved")
    with pytest.raises(asyncpg.DataError, match="never projected"):
        await project_batched(db, [opened, reserved], 10)


def test_story_covers_every_event_type(story: Story) -> None:
    """Every event type of the projected aggregates occurs in the story, so the tests above
    apply each one: a new event type fails here until the projections handle it."""
    projected = ("CreditAccount", "GenerationJob", "Subscription")
    expected = {t for t in event_classes() if t.partition(".")[0] in projected}
    assert expected - {e.type for e in story.envs} == set()


def test_registry() -> None:
    assert [p.name for p in ALL_PROJECTIONS] == [
        "ledger",
        "jobs",
        "subscriptions",
        "uploads",
        "hold_outcomes",
        "boards",
        "user_models",
    ]
    assert get_projection("jobs").tables == ("jobs", "images", "usage_records", "upload_owners")
    with pytest.raises(KeyError, match="known projections"):
        get_projection("nope")
    owned = [t for p in ALL_PROJECTIONS for t in p.tables]
    assert len(owned) == len(set(owned))


# ------------------------------------------------------------ property: random histories

SUBMIT = st.tuples(st.just("submit"), st.integers(1, 40))
RUN = st.tuples(
    st.just("run"),
    st.integers(0, 20),
    st.sampled_from(["complete", "user", "platform", "retry", "cancel", "stop"]),
    st.integers(0, 150),  # GPU time used, in % of the job's budget
)
OPS = st.one_of(
    SUBMIT,
    RUN,
    st.tuples(st.just("advance"), st.integers(1, 10)),  # days
    st.tuples(
        st.just("grant"),
        st.integers(1, 40),  # credits
        st.sampled_from(list(LotSource)),
        st.sampled_from([None, 1, 5, 40]),  # days valid
        st.integers(0, 2),  # days until valid
    ),
    st.tuples(st.just("refund"), st.integers(0, 20)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("adjust"), st.integers(-30, 30).filter(bool)),
    st.tuples(
        st.just("subscription"),
        st.sampled_from(["start", "renew", "tester", "studio", "fail", "cancel", "revoke", "end"]),
    ),
)
HISTORIES = st.lists(st.one_of(SUBMIT, RUN, OPS), min_size=5, max_size=50)


def play(app: PinkseaApplication, user: str, ops: list[tuple[Any, ...]]) -> list[UUID]:
    """Run random commands; commands the domain refuses are part of the game."""
    now = T0
    app.register_user(user, now)
    jobs: list[UUID] = []

    def submit(n: int, steps: int) -> UUID:
        params = TINY.model_copy(update={"steps": steps})
        result = app.submit_job(user, idempotency_key=f"j{n}", params=params, at=now)
        if result.job_id is None:  # refused: answered, nothing saved, no job to play with
            raise DomainError(result.detail or "refused")
        job_id = result.job_id
        jobs.append(job_id)
        return job_id

    def pick(index: int, wanted: Callable[[GenerationJob], bool]) -> UUID | None:
        chosen = [j for j in jobs if wanted(app.job(j))]
        return chosen[index % len(chosen)] if chosen else None

    for n, op in enumerate(ops):
        try:
            match op:
                case ("submit", steps):
                    submit(n, steps)
                case ("run", index, outcome, percent):
                    # An open job, or a new one: histories should mostly run jobs.
                    job_id = pick(index, lambda j: not j.is_terminal) or submit(n, 1 + index)
                    run_job(app, job_id, outcome, percent, now)
                case ("advance", days):
                    now += days * DAY
                case ("grant", credits, source, days, start):
                    valid_from = now + start * DAY
                    app.grant_credits(
                        user, grant_id=f"g{n}", source=source, amount_mc=credits * 1000,
                        valid_from=valid_from,
                        valid_until=None if days is None else valid_from + days * DAY,
                        actor="prop", reason="prop", at=now,
                    )  # fmt: skip
                case ("refund", index):
                    charged = pick(index, lambda j: j.charged_mc > 0)
                    if charged is not None:
                        app.refund_job(charged, reason="prop", actor="prop", at=now)
                case ("expire",):
                    app.expire_due(user, now)
                case ("adjust", credits):
                    app.adjust_credits(
                        user, adjustment_id=f"a{n}", amount_mc=credits * 1000, reason="prop",
                        actor="prop", at=now,
                    )  # fmt: skip
                case ("subscription", change):
                    change_subscription(app, user, change, f"{change}{n}", now)
        except DomainError:
            pass
    return jobs


def run_job(
    app: PinkseaApplication, job_id: UUID, outcome: str, percent: int, now: datetime
) -> None:
    if outcome == "cancel":
        app.cancel_job(job_id, now)
        return
    attempt = app.job(job_id).attempt + 1
    run_to_start(app, job_id, now, attempt)
    gpu_ms = app.job(job_id).budget_ms * percent // 100
    if outcome == "complete":
        app.complete_job(
            job_id, attempt=attempt, gpu_ms=gpu_ms, cuda_ms=gpu_ms,
            images=images_for(job_id, 1), at=now,
        )  # fmt: skip
    elif outcome == "stop":
        app.cancel_job(job_id, now)
        app.record_cancelled_run(job_id, attempt=attempt, gpu_ms=gpu_ms, at=now)
    else:
        fault = Fault.USER if outcome == "user" else Fault.PLATFORM
        app.fail_job(
            job_id, attempt=attempt, reason=outcome, retryable=outcome == "retry", fault=fault,
            gpu_ms=gpu_ms, at=now,
        )  # fmt: skip


def change_subscription(
    app: PinkseaApplication, user: str, change: str, key: str, now: datetime
) -> None:
    match change:
        case "start":
            app.start_subscription(
                user, plan="starter", external_id=key, period_start=now,
                period_end=now + 30 * DAY, at=now,
            )  # fmt: skip
        case "renew":
            app.renew_period(
                user, invoice_id=key, period_start=now, period_end=now + 30 * DAY, at=now
            )
        case "tester":
            app.grant_tester_plan(
                user, grant_id=key, admin="admin", credits=10, valid_from=now,
                valid_until=now + 10 * DAY, reason="prop", at=now,
            )  # fmt: skip
        case "studio":
            app.change_plan(user, to_plan="studio", actor="admin", reason="prop", at=now)
        case "fail":
            app.record_payment_failed(user, invoice_id=key, at=now)
        case "cancel":
            app.schedule_cancellation(user, now)
        case "revoke":
            app.revoke_cancellation(user, now)
        case "end":
            app.end_subscription(user, reason="prop", at=now)


async def check_history(database_url: str, ops: list[tuple[Any, ...]], batch: int) -> None:
    conn, schema = await _fresh_schema(database_url)
    try:
        await migrate(conn)
        app = new_app()
        jobs = play(app, "prop-user", ops)
        envs = envelopes(app)
        await project_batched(conn, envs, batch)
        await assert_ledger_matches(conn, app, "prop-user", envs)
        await assert_usage_matches(conn, app, "prop-user", envs)
        await assert_subscription_matches(conn, app, "prop-user")
        await assert_jobs_match(conn, app, jobs)
        tester_grants = [
            e
            for e in envs
            if e.type == "CreditAccount.CreditsGranted" and e.data["source"] == "tester"
        ]
        assert await conn.fetchval(
            "SELECT count(*) FROM test_plan_grants WHERE kind = 'credits'"
        ) == len(tester_grants)
        account = app.account("prop-user")
        for at in (T0, T0 + 3 * DAY, T0 + 40 * DAY, T0 + 400 * DAY):
            balance = await queries.get_balance(conn, "prop-user", at=at)
            assert balance is not None and balance.spendable_mc == account.available_mc(at)
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=HISTORIES, batch=st.sampled_from([1, 7, 1000]))
def test_random_histories_project_to_the_aggregate_state(
    database_url: str, ops: list[tuple[Any, ...]], batch: int
) -> None:
    asyncio.run(check_history(database_url, ops, batch))

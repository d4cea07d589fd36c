"""The long-running loops retry operational errors and die of everything else.

A database or broker that is down, restarting or slow is retried with a backoff; a bug (here an
AssertionError raised inside a loop's handler) ends the loop with that very error, so the
process exits non-zero and its supervisor restarts it, instead of logging the bug forever.
The relay, the projection runner and the notifier run on the real stack with a bug put into
one handler; the expiry, scheduler and gauge loops get their round replaced.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from pydantic import ValidationError

from domain.application import PinkseaApplication
from eventstore.envelope import Envelope
from eventstore.relay import Relay
from infra.errors import OPERATIONAL_ERRORS, Backoff
from infra.settings import Settings
from infra.topics import CREDITS_TOPIC
from projections import gauges
from projections.base import Projection
from projections.runner import LiveProjectionRunner
from tests.integration.streaming_kit import wait_until
from workflows import expiry
from workflows.notifier.service import Notifier
from workflows.notifier.transports import SmtpTransport
from workflows.scheduler.service import Scheduler

LOOP_END_S = 60.0  # a loop that should die of a bug does so well within this


class Bug(AssertionError):
    """The bug put into a handler: an assertion that failed."""


# ------------------------------------------------------------------- what is operational


def test_operational_errors_are_the_worlds_and_bugs_are_not() -> None:
    for operational in (
        ConnectionRefusedError(),
        TimeoutError(),
        OSError("no route to host"),
        KafkaConnectionError(),
        CommitFailedError(),  # the group rebalanced meanwhile (the settler once died of it)
        asyncpg.exceptions.CannotConnectNowError(),
        asyncpg.exceptions.AdminShutdownError(),
        asyncpg.exceptions.ConnectionDoesNotExistError(),
        asyncpg.exceptions.SerializationError(),
    ):
        assert isinstance(operational, OPERATIONAL_ERRORS), operational
    try:
        Envelope.model_validate({})
    except ValidationError as e:
        invalid = e
    for bug in (
        Bug(),
        KeyError("lot"),
        TypeError(),
        invalid,
        asyncpg.exceptions.UndefinedColumnError(),
        asyncpg.exceptions.PostgresSyntaxError(),
        asyncpg.exceptions.DataError(),
    ):
        assert not isinstance(bug, OPERATIONAL_ERRORS), bug


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = Backoff(first_s=0.5, max_s=3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5
    with pytest.raises(AssertionError):
        Backoff(first_s=2.0, max_s=1.0)


# ------------------------------------------------------------- loops without the stack


async def _ends_with_bug(loop: Any) -> None:
    with pytest.raises(Bug):
        await asyncio.wait_for(loop, LOOP_END_S)


async def test_expiry_retries_a_database_outage_and_dies_of_a_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds: list[str] = []

    async def tick(pool: object, app: object, at: datetime) -> dict[str, int]:
        rounds.append("round")
        if len(rounds) <= 2:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        raise Bug("a round found a lot in a state it cannot be in")

    monkeypatch.setattr(expiry, "tick", tick)
    await _ends_with_bug(expiry.run_expiry(None, None, asyncio.Event(), interval_s=0.01))  # type: ignore[arg-type]
    assert len(rounds) == 3  # two outages survived, then the bug ended it


async def test_the_scheduler_loop_retries_an_outage_and_dies_of_a_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds: list[str] = []

    async def dispatch_round(self: Scheduler) -> None:
        rounds.append("round")
        if len(rounds) == 1:
            raise ConnectionRefusedError("PostgreSQL is down")
        raise Bug("an assignment to a worker of another tier")

    monkeypatch.setattr(Scheduler, "dispatch_round", dispatch_round)
    scheduler = Scheduler(Settings(), None, None)  # type: ignore[arg-type]
    await _ends_with_bug(scheduler._loop(asyncio.Event()))
    assert len(rounds) == 2


async def test_the_gauges_survive_an_outage_and_die_of_a_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refreshes: list[str] = []

    async def down(*_: object) -> None:
        refreshes.append("kafka")
        raise KafkaConnectionError("no broker")

    async def buggy(*_: object) -> None:
        refreshes.append("read_models")
        if refreshes.count("read_models") > 1:
            raise Bug("a negative count of subscriptions")

    monkeypatch.setattr(gauges, "refresh_consumer_lag", down)
    monkeypatch.setattr(gauges, "refresh_read_model_gauges", buggy)
    loop = gauges.run_gauges(
        Settings(),
        None,
        asyncio.Event(),
        read_models_interval_s=0.01,
        lag_interval_s=0.01,
    )
    await _ends_with_bug(loop)
    assert "kafka" in refreshes  # the broker being down did not end it


# ------------------------------------------------------------------ loops on the stack


async def _published(stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication) -> None:
    """A user's sign-up events, relayed to Kafka."""
    app.register_user(f"u-{uuid.uuid4().hex[:6]}", datetime.now(UTC))
    newest = app.recorder.max_notification_id() or 0
    relay = Relay(stack, pool, poll_interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))

    async def caught_up() -> bool:
        return relay.position >= newest

    try:
        await wait_until(caught_up, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.integration
async def test_a_bug_in_the_relay_ends_it(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication
) -> None:
    class BuggyRelay(Relay):
        async def publish_batch(self, producer: Any) -> int:
            raise Bug("an envelope without its aggregate id")

    app.register_user("relayed", datetime.now(UTC))
    await _ends_with_bug(BuggyRelay(stack, pool, poll_interval_s=0.05).run(asyncio.Event()))


class BuggyProjection(Projection):
    name = "buggy"
    topics: ClassVar[tuple[str, ...]] = (CREDITS_TOPIC,)
    tables: ClassVar[tuple[str, ...]] = ()

    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        raise Bug(f"a lot went negative applying {env.type}")


@pytest.mark.integration
async def test_a_bug_in_a_projection_ends_its_runner(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication
) -> None:
    await _published(stack, pool, app)
    runner = LiveProjectionRunner(stack, pool, BuggyProjection())
    await _ends_with_bug(runner.run(asyncio.Event()))


@pytest.mark.integration
async def test_a_bug_in_the_notifier_ends_it(
    stack: Settings,
    pool: asyncpg.Pool,
    app: PinkseaApplication,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def process(self: Notifier, polled: object) -> None:
        raise Bug("a crossing of a threshold above the balance")

    monkeypatch.setattr(Notifier, "process", process)
    await _published(stack, pool, app)
    notifier = Notifier(stack, pool, SmtpTransport(stack.smtp_host, stack.smtp_port))
    await _ends_with_bug(notifier.run(asyncio.Event()))

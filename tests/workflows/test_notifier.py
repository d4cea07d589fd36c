"""The low-balance notifier on the real stack: domain commands -> event store -> relay ->
Kafka -> notifier -> the local SMTP server's Maildir (or SES on the moto server), with the
record of each crossing in PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import mailbox
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from domain.application import PinkseaApplication
from domain.plans import PLANS
from eventstore.envelope import Envelope
from eventstore.relay import Relay
from infra.settings import Settings
from infra.topics import CREDITS_TOPIC
from tests.conftest import reachable
from tests.integration.streaming_kit import (
    running,
    wait_until,
)
from workflows.notifier.messages import SUBJECT
from workflows.notifier.preferences import remember_address, set_low_balance_emails
from workflows.notifier.service import REACHED, Notifier
from workflows.notifier.transports import SesTransport, SmtpTransport

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TRIAL_MC = PLANS["trial"].credits_per_month_mc


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def maildir() -> Path:
    """The Maildir of the local stack's SMTP server (infra/local/smtp.sh)."""
    import smtplib

    settings = Settings()
    address = f"{settings.smtp_host}:{settings.smtp_port}"
    with (
        reachable("SMTP", address),
        smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=5) as server,
    ):
        server.noop()
    stack_dir = Path(os.environ.get("PINKSEA_STACK_DIR", "~/.pinksea-stack")).expanduser()
    return stack_dir / "smtp" / "maildir"


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


# -------------------------------------------------------------------------------- helpers


def now() -> datetime:
    return datetime.now(UTC)


def spend_down(app: PinkseaApplication, user: str, key: str, mc: int) -> None:
    app.adjust_credits(user, adjustment_id=key, amount_mc=-mc, reason="t", actor="t", at=now())


def top_up(app: PinkseaApplication, user: str, key: str, mc: int) -> None:
    app.adjust_credits(user, adjustment_id=key, amount_mc=mc, reason="t", actor="t", at=now())


def cross(app: PinkseaApplication, user: str) -> None:
    """Sign up (the trial's credits) and spend all but 1 mc: one LowBalanceReached."""
    app.register_user(user, now())
    spend_down(app, user, "down-1", TRIAL_MC - 1)


def mails_to(maildir: Path, address: str) -> list[Message]:
    box = mailbox.Maildir(maildir, create=False)
    return [m for m in box if m.get("X-RcptTo") == address]


async def records(pool: asyncpg.Pool, user: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM notifications WHERE user_id = $1 ORDER BY occurred_at, event_id", user
    )


def recorded(pool: asyncpg.Pool, user: str, count: int):
    async def check() -> bool:
        return len(await records(pool, user)) >= count

    return check


def smtp(settings: Settings) -> SmtpTransport:
    return SmtpTransport(settings.smtp_host, settings.smtp_port)


async def reached_envelopes(settings: Settings, count: int) -> list[tuple[bytes, bytes]]:
    """The first ``count`` LowBalanceReached messages (key, value) on the credits topic."""
    consumer = AIOKafkaConsumer(
        settings.topic(CREDITS_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(100):  # polls, 0.5 s each at most
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                found += [
                    (m.key, m.value)
                    for m in messages
                    if Envelope.from_bytes(m.value).type == REACHED
                ]
            if len(found) >= count:
                return found
    finally:
        await consumer.stop()
    raise AssertionError(f"{count} LowBalanceReached expected on the topic, found {len(found)}")


async def publish_again(settings: Settings, key: bytes, value: bytes) -> None:
    """What the relay does after a crash between the broker's ack and its position: re-send."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(CREDITS_TOPIC), value, key=key)
    finally:
        await producer.stop()


# ---------------------------------------------------------------------------------- tests


async def test_a_crossing_sends_one_email_even_when_delivered_twice(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    cross(app, user)
    notifier = Notifier(stack, pool, smtp(stack))
    async with running(Relay(stack, pool, poll_interval_s=0.1).run, notifier.run):
        await wait_until(recorded(pool, user, 1))
        [(key, value)] = await reached_envelopes(stack, 1)
        await publish_again(stack, key, value)
        await wait_until(lambda: _true(notifier.counts["duplicate"] >= 1))
    # A redelivery that reaches the notifier some other way (its offsets lost) is one too.
    assert await notifier.handle(Envelope.from_bytes(value)) == "duplicate"

    [mail] = mails_to(maildir, address)
    [row] = await records(pool, user)
    envelope = Envelope.from_bytes(value)
    assert (row["outcome"], row["reason"], row["address"]) == ("sent", None, address)
    assert row["event_id"] == envelope.id
    assert (row["threshold_mc"], row["available_mc"]) == (TRIAL_MC // 10, 1)
    assert mail["Subject"] == SUBJECT
    assert mail["Message-ID"] == row["transport_id"]
    assert mail["X-Pinksea-Event"] == envelope.id
    assert mail["Auto-Submitted"] == "auto-generated"
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    body = payload.decode()
    assert "down to 0.001 credits, below 50.000 credits" in body
    assert stack.checkout_cancel_url in body
    # (a batch retried after a rebalance would count more duplicates, never a second send)
    assert notifier.counts["sent"] == 1 and notifier.counts["duplicate"] >= 2


async def test_an_unsubscribed_user_gets_none(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    await set_low_balance_emails(pool, user, False, now())
    cross(app, user)
    async with running(
        Relay(stack, pool, poll_interval_s=0.1).run, Notifier(stack, pool, smtp(stack)).run
    ):
        await wait_until(recorded(pool, user, 1))
    [row] = await records(pool, user)
    assert (row["outcome"], row["reason"], row["address"]) == ("skipped", "unsubscribed", None)
    assert mails_to(maildir, address) == []


async def test_a_user_without_an_address_is_recorded_as_skipped(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str
) -> None:
    cross(app, user)
    async with running(
        Relay(stack, pool, poll_interval_s=0.1).run, Notifier(stack, pool, smtp(stack)).run
    ):
        await wait_until(recorded(pool, user, 1))
    [row] = await records(pool, user)
    assert (row["outcome"], row["reason"]) == ("skipped", "no address")


async def test_a_re_armed_crossing_sends_a_second_email(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    cross(app, user)
    async with running(
        Relay(stack, pool, poll_interval_s=0.1).run, Notifier(stack, pool, smtp(stack)).run
    ):
        await wait_until(recorded(pool, user, 1))
        top_up(app, user, "up-1", TRIAL_MC)  # LowBalanceCleared: the warning re-arms
        spend_down(app, user, "down-2", TRIAL_MC - 1)  # LowBalanceReached again
        await wait_until(recorded(pool, user, 2))
    rows = await records(pool, user)
    assert [r["outcome"] for r in rows] == ["sent", "sent"]
    mails = mails_to(maildir, address)
    assert len(mails) == 2
    assert {m["Message-ID"] for m in mails} == {r["transport_id"] for r in rows}
    assert len({r["transport_id"] for r in rows}) == 2


async def test_an_old_crossing_read_late_is_not_mailed(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    """A new notifier reads the topic's whole history: last year's crossings are old news."""
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    app.register_user(user, now() - timedelta(days=2))
    app.adjust_credits(
        user,
        adjustment_id="down-old",
        amount_mc=-(TRIAL_MC - 1),
        reason="t",
        actor="t",
        at=now() - timedelta(days=2),
    )
    async with running(
        Relay(stack, pool, poll_interval_s=0.1).run, Notifier(stack, pool, smtp(stack)).run
    ):
        await wait_until(recorded(pool, user, 1))
    [row] = await records(pool, user)
    assert (row["outcome"], row["reason"]) == ("skipped", "stale")
    assert mails_to(maildir, address) == []


async def test_a_deactivated_account_is_not_mailed_until_reactivated(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    app.register_user(user, now())
    app.deactivate_user(user, reason="abuse", actor="admin", at=now())
    spend_down(app, user, "down-1", TRIAL_MC - 1)  # crosses while deactivated
    async with running(
        Relay(stack, pool, poll_interval_s=0.1).run, Notifier(stack, pool, smtp(stack)).run
    ):
        await wait_until(recorded(pool, user, 1))
        app.reactivate_user(user, reason="appeal", actor="admin", at=now())
        top_up(app, user, "up-1", TRIAL_MC)
        spend_down(app, user, "down-2", TRIAL_MC - 1)  # crosses again, active
        await wait_until(recorded(pool, user, 2))
    rows = await records(pool, user)
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("skipped", "deactivated"),
        ("sent", None),
    ]
    assert len(mails_to(maildir, address)) == 1


def _ses_messages(endpoint: str, address: str) -> list[dict[str, Any]]:
    with urlopen(f"{endpoint}/moto-api/data.json", timeout=10) as response:  # our own moto
        data = json.load(response)
    raw = data.get("ses", {}).get("RawMessage", [])
    return [m for m in raw if address in m["destinations"]]


@pytest.fixture(scope="module")
def ses_endpoint() -> Iterator[str]:
    """A moto server process of this module's own, speaking SES v2 over HTTP. Not the stack's:
    reading back what SES accepted needs moto's /moto-api/data.json, which fails on a shared
    server as soon as another test has deleted a bucket that held objects."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # 0.1 s apart: 30 s at most
            if process.poll() is not None:
                raise RuntimeError(f"moto.server exited with {process.returncode}")
            with contextlib.suppress(OSError), urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("moto.server did not answer in 30 s")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def ses_stack(stack: Settings, ses_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The SES backend against a moto server (any credentials do there)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "pinksea")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pinksea-secret")
    domain = f"n{uuid.uuid4().hex[:8]}.pinksea.test"
    return stack.model_copy(
        update={
            "email_backend": "ses",
            "ses_endpoint_url": ses_endpoint,
            "email_sender": f"Pinksea <no-reply@{domain}>",
        }
    )


async def test_ses_sends_the_same_message(
    ses_stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str
) -> None:
    transport = SesTransport.from_settings(ses_stack)
    domain = ses_stack.email_sender.rpartition("@")[2].rstrip(">")
    transport.client.create_email_identity(EmailIdentity=domain)  # verified at once on moto
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    cross(app, user)
    async with running(
        Relay(ses_stack, pool, poll_interval_s=0.1).run, Notifier(ses_stack, pool, transport).run
    ):
        await wait_until(recorded(pool, user, 1))
    [row] = await records(pool, user)
    assert row["outcome"] == "sent"
    [sent] = _ses_messages(str(ses_stack.ses_endpoint_url), address)
    assert sent["id"] == row["transport_id"]
    assert f"Subject: {SUBJECT}" in sent["raw_data"]
    assert f"X-Pinksea-Event: {row['event_id']}" in sent["raw_data"]


async def test_a_refused_message_is_recorded_as_failed_and_the_rest_go_on(
    ses_stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str
) -> None:
    """SES refuses a sender it has not verified (MessageRejected): permanent, so the crossing
    is recorded as failed and the next user's crossing is handled, not stuck behind it."""
    second = f"{user}-2"
    for who in (user, second):
        await remember_address(pool, who, f"{who}@example.com", now())
        cross(app, who)
    transport = SesTransport.from_settings(ses_stack)
    async with running(
        Relay(ses_stack, pool, poll_interval_s=0.1).run, Notifier(ses_stack, pool, transport).run
    ):
        await wait_until(recorded(pool, user, 1))
        await wait_until(recorded(pool, second, 1))
    for who in (user, second):
        [row] = await records(pool, who)
        assert row["outcome"] == "failed" and "MessageRejected" in row["reason"], dict(row)
        assert row["address"] is None


async def test_pinksea_notify_runs_as_a_process(
    stack: Settings, pool: asyncpg.Pool, app: PinkseaApplication, user: str, maildir: Path
) -> None:
    address = f"{user}@example.com"
    await remember_address(pool, user, address, now())
    cross(app, user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINKSEA_")}
    env.update(
        PINKSEA_DATABASE_URL=stack.database_url,
        PINKSEA_KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap_servers,
        PINKSEA_KAFKA_TOPIC_PREFIX=stack.kafka_topic_prefix,
        PINKSEA_EMAIL_BACKEND="smtp",
        PINKSEA_LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "notify", "--metrics-port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with running(Relay(stack, pool, poll_interval_s=0.1).run):
            await wait_until(recorded(pool, user, 1), timeout=90)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]
    [row] = await records(pool, user)
    assert row["outcome"] == "sent"
    assert len(mails_to(maildir, address)) == 1


async def _true(value: bool) -> bool:
    return value

"""The webhook delivery process against real HTTP receivers on 127.0.0.1 (http.server threads)
and the real database: signatures that verify, receivers that are down, slow or answer 500,
exactly-once recording under redelivery, and the SSRF rules at delivery time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from standardwebhooks import Webhook

from domain.ids import account_id
from eventstore.envelope import Envelope
from infra.settings import Settings
from read_models.webhooks import new_secret
from workflows.webhooks.events import event_id
from workflows.webhooks.service import WebhookService

USER = "hook-user"
FAST = (0.0, 0.05, 0.05, 0.05, 0.05, 0.05)  # the schedule, compressed: same shape, no waiting
WAIT_S = 20.0  # an upper bound for a condition to become true; never a timing assertion


@dataclass
class Receiver:
    """A real HTTP server: answers with ``codes`` in turn (then 200), or holds each request until
    ``release`` is set when ``hold`` is."""

    codes: list[int] = field(default_factory=list)
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    received: list[tuple[dict[str, str], str]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextlib.contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"])).decode()
            if receiver.hold:
                receiver.release.wait(WAIT_S)
            code = receiver.codes.pop(0) if receiver.codes else 200
            receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Message:
    value: bytes
    partition: int = 0
    offset: int = 0


def envelope(job: uuid.UUID, version: int, type_: str, data: dict[str, Any]) -> Envelope:
    return Envelope(
        id=f"{job}:{version}",
        type=type_,
        aggregate_id=job,
        version=version,
        position=version,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        data=data,
    )


def batch(*envelopes: Envelope) -> dict[TopicPartition, list[Any]]:
    return {TopicPartition("t", 0): [Message(e.to_bytes()) for e in envelopes]}


def submitted(job: uuid.UUID, webhook: dict[str, Any] | None = None) -> Envelope:
    data = {"user_id": USER, "idempotency_key": "k", "parameters": {}, "seed": 1,
            "fingerprint": "f", "tier": "basic", "webhook": webhook}  # fmt: skip
    return envelope(job, 1, "GenerationJob.Submitted", data)


def completed(job: uuid.UUID) -> Envelope:
    image = {"name": f"{job}-0", "key": "k", "thumbnail_key": "t", "size_bytes": 10,
             "width": 64, "height": 64}  # fmt: skip
    data = {"attempt": 1, "gpu_ms": 1234, "cuda_ms": None, "charged_mc": 2468, "images": [image]}
    return envelope(job, 5, "GenerationJob.Completed", data)


async def add_endpoint(pool: asyncpg.Pool, url: str, events: list[str] | None = None) -> str:
    endpoint_id, secret = "we_" + uuid.uuid4().hex, new_secret()
    await pool.execute(
        "INSERT INTO webhook_endpoints (endpoint_id, user_id, account_id, url, enabled_events,"
        " secret, created_at, updated_at, request_digest)"
        " VALUES ($1, $2, $3, $4, $5, $6, now(), now(), '')",
        endpoint_id, USER, account_id(USER), url, events or ["*"], secret,
    )  # fmt: skip
    return endpoint_id


async def secret_of(pool: asyncpg.Pool, endpoint_id: str) -> str:
    return str(await pool.fetchval("SELECT secret FROM webhook_endpoints WHERE endpoint_id = $1",
                                   endpoint_id))  # fmt: skip


async def delivery(pool: asyncpg.Pool, target: str) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM webhook_deliveries WHERE target = $1", target)


async def until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def delivering(service: WebhookService) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(service.deliver(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await service.close()


@pytest.fixture
def hooks_settings(stack: Settings) -> Settings:
    return stack.model_copy(update={"webhooks_allow_loopback": True})


def service(settings: Settings, pool: asyncpg.Pool, **kwargs: Any) -> WebhookService:
    return WebhookService(settings, pool, schedule_s=FAST, tick_s=0.05, **kwargs)


async def test_a_completed_job_is_delivered_signed_and_recorded_once(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver()) as receiver:
        endpoint = await add_endpoint(pool, receiver.url, ["job.completed"])
        svc = service(hooks_settings, pool)
        polled = batch(submitted(job), completed(job))
        assert await svc.record(polled) == 1
        assert await svc.record(polled) == 0  # the same Kafka messages again: nothing new
        async with delivering(svc):
            await until(lambda: _delivered(pool, endpoint))
        (headers, body), *more = receiver.received
        assert not more
        payload = Webhook(await secret_of(pool, endpoint)).verify(body, headers)
        assert headers["webhook-id"] == event_id(f"{job}:5") == payload["id"]
        assert payload["type"] == "job.completed"
        assert payload["data"]["charged_mc"] == 2468 and payload["data"]["gpu_ms"] == 1234
        assert payload["data"]["images"][0]["href"] == f"/v1/images/{job}-0"
        with pytest.raises(Exception, match="signature"):
            Webhook(new_secret()).verify(body, headers)  # another secret does not verify it
    count = await pool.fetchval("SELECT count(*) FROM webhook_deliveries")
    assert count == 1


@pytest.mark.parametrize("window_s", [3600, -1])
async def test_a_rotated_endpoint_is_signed_with_both_secrets_until_the_old_one_expires(
    hooks_settings: Settings, pool: asyncpg.Pool, window_s: int
) -> None:
    job = uuid.uuid4()
    with serve(Receiver()) as receiver:
        endpoint = await add_endpoint(pool, receiver.url, ["job.completed"])
        old = await secret_of(pool, endpoint)
        await pool.execute(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,"
            " previous_secret_expires_at = now() + make_interval(secs => $3)"
            " WHERE endpoint_id = $1",
            endpoint, new_secret(), window_s,
        )  # fmt: skip
        svc = service(hooks_settings, pool)
        assert await svc.record(batch(submitted(job), completed(job))) == 1
        async with delivering(svc):
            await until(lambda: _delivered(pool, endpoint))
        ((headers, body),) = receiver.received
    assert Webhook(await secret_of(pool, endpoint)).verify(body, headers)["type"] == "job.completed"
    if window_s > 0:
        assert Webhook(old).verify(body, headers)["type"] == "job.completed"
        assert len(headers["webhook-signature"].split(" ")) == 2
    else:  # expired: the old secret no longer verifies
        with pytest.raises(Exception, match="signature"):
            Webhook(old).verify(body, headers)


async def _delivered(pool: asyncpg.Pool, target: str) -> bool:
    row = await delivery(pool, target)
    return row is not None and row["status"] == "delivered"


async def test_a_receiver_answering_500_is_retried_until_it_accepts(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver(codes=[500, 503])) as receiver:
        endpoint = await add_endpoint(pool, receiver.url)
        svc = service(hooks_settings, pool)
        await svc.record(batch(submitted(job), completed(job)))
        async with delivering(svc):
            await until(lambda: _delivered(pool, endpoint))
    row = await delivery(pool, endpoint)
    assert row["attempts"] == 3 and row["last_status_code"] == 200
    assert len(receiver.received) == 3
    assert len({h["webhook-id"] for h, _ in receiver.received}) == 1  # one event id throughout
    assert len({b for _, b in receiver.received}) == 1  # the same bytes every time


async def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job, port = uuid.uuid4(), free_port()
    endpoint = await add_endpoint(pool, f"http://127.0.0.1:{port}/hook")
    svc = service(
        hooks_settings,
        pool,
    )
    await svc.record(batch(submitted(job), completed(job)))
    async with delivering(svc):

        async def failed_once() -> bool:
            row = await delivery(pool, endpoint)
            return bool(row["attempts"] >= 1)

        await until(failed_once)
        row = await delivery(pool, endpoint)
        assert row["status"] == "pending" and row["last_status_code"] is None
        assert row["last_error"]
        with serve(Receiver(port=port)) as receiver:
            await until(lambda: _delivered(pool, endpoint))
    assert len(receiver.received) == 1


async def test_a_slow_receiver_times_out_and_never_holds_up_another(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver(hold=True)) as slow, serve(Receiver()) as fast:
        slow_endpoint = await add_endpoint(pool, slow.url)
        fast_endpoint = await add_endpoint(pool, fast.url)
        svc = service(hooks_settings, pool, attempt_timeout_s=1.0)
        await svc.record(batch(submitted(job), completed(job)))
        async with delivering(svc):
            # Delivered while the slow receiver still holds its request.
            await until(lambda: _delivered(pool, fast_endpoint))
            assert not slow.received

            async def timed_out() -> bool:
                row = await delivery(pool, slow_endpoint)
                return bool(row["attempts"] >= 1)

            await until(timed_out)
            row = await delivery(pool, slow_endpoint)
            assert row["status"] == "pending" and "no answer within" in row["last_error"]
            slow.hold = False
            slow.release.set()
            await until(lambda: _delivered(pool, slow_endpoint))


async def test_the_schedule_used_up_fails_the_delivery_and_a_manual_retry_sends_it(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver(codes=[500] * len(FAST))) as receiver:
        endpoint = await add_endpoint(pool, receiver.url)
        svc = service(hooks_settings, pool)
        await svc.record(batch(submitted(job), completed(job)))
        async with delivering(svc):

            async def failed() -> bool:
                return bool((await delivery(pool, endpoint))["status"] == "failed")

            await until(failed)
            assert (await delivery(pool, endpoint))["attempts"] == len(FAST)
            await pool.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now()"
                " WHERE target = $1",
                endpoint,
            )  # what POST .../retry does (read_models.webhooks.retry_delivery)
            await until(lambda: _delivered(pool, endpoint))
    assert len(receiver.received) == len(FAST) + 1


async def test_a_jobs_own_webhook_is_signed_with_the_users_default_secret(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver()) as receiver:
        svc = service(hooks_settings, pool)
        hook = {"url": receiver.url, "events": ["job.completed"]}
        accepted = envelope(job, 2, "GenerationJob.Accepted",
                            {"hold_mc": 5, "budget_ms": 5, "estimate_ms": 4})  # fmt: skip
        assert await svc.record(batch(submitted(job, hook), accepted, completed(job))) == 1
        async with delivering(svc):
            await until(lambda: _delivered(pool, "job"))
    secret = await pool.fetchval(
        "SELECT secret FROM webhook_default_secrets WHERE user_id = $1", USER
    )
    ((headers, body),) = receiver.received
    assert Webhook(secret).verify(body, headers)["type"] == "job.completed"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://[::ffff:192.168.1.1]/hook",
    ],
)
async def test_internal_addresses_are_refused_at_delivery(
    hooks_settings: Settings, pool: asyncpg.Pool, url: str
) -> None:
    job = uuid.uuid4()
    # Written past the API's check (as a DNS change after registration would make it).
    endpoint = await add_endpoint(pool, url)
    svc = service(hooks_settings, pool)
    await svc.record(batch(submitted(job), completed(job)))
    async with delivering(svc):

        async def attempted() -> bool:
            return bool((await delivery(pool, endpoint))["attempts"] >= 1)

        await until(attempted)
    row = await delivery(pool, endpoint)
    assert row["status"] != "delivered" and row["last_error"].startswith("refused:")


async def test_loopback_is_refused_at_delivery_unless_allowed(
    stack: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    with serve(Receiver()) as receiver:
        endpoint = await add_endpoint(pool, receiver.url)
        svc = service(stack, pool)  # PINKSEA_WEBHOOKS_ALLOW_LOOPBACK unset
        await svc.record(batch(submitted(job), completed(job)))
        async with delivering(svc):

            async def attempted() -> bool:
                return bool((await delivery(pool, endpoint))["attempts"] >= 1)

            await until(attempted)
    assert not receiver.received
    assert (await delivery(pool, endpoint))["last_error"].startswith("refused:")


async def test_a_disabled_endpoint_records_nothing(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    job = uuid.uuid4()
    endpoint = await add_endpoint(pool, "http://127.0.0.1:9/hook")
    await pool.execute(
        "UPDATE webhook_endpoints SET disabled = true WHERE endpoint_id = $1", endpoint
    )
    svc = service(hooks_settings, pool)
    assert await svc.record(batch(submitted(job), completed(job))) == 0


async def test_low_balance_goes_to_the_accounts_endpoints(
    hooks_settings: Settings, pool: asyncpg.Pool
) -> None:
    with serve(Receiver()) as receiver:
        endpoint = await add_endpoint(pool, receiver.url, ["balance.low"])
        svc = service(hooks_settings, pool)
        low = envelope(account_id(USER), 9, "CreditAccount.LowBalanceReached",
                       {"threshold_mc": 1000, "available_mc": 900})  # fmt: skip
        job = uuid.uuid4()
        assert await svc.record(batch(low, submitted(job), completed(job))) == 1  # filter
        async with delivering(svc):
            await until(lambda: _delivered(pool, endpoint))
    ((headers, body),) = receiver.received
    payload = Webhook(await secret_of(pool, endpoint)).verify(body, headers)
    assert payload["type"] == "balance.low" and payload["data"]["available_mc"] == 900

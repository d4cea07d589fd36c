"""Kafka client setup and topic administration (aiokafka).

Every aiokafka client in the code base takes its connection options from
:func:`connection_kwargs`: PLAINTEXT on the local stack, TLS + IAM (SASL_SSL/OAUTHBEARER) on MSK,
TLS + SCRAM-SHA-512 against a local broker with a private CA (the production rehearsal,
``KAFKA_SASL_SSL_PORT`` in infra/local/kafka.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from infra.loops import sleep_or_stop
from infra.settings import Settings
from infra.topics import DLQ_TOPIC, DOMAIN_TOPICS, GPU_TIERS, REPORTS_TOPIC, dispatch_topic

WEEK_MS = 7 * 24 * 3600 * 1000
# Leaving Kafka on stop (a last commit, a consumer's LeaveGroup, a producer's flush) takes
# milliseconds; a broker that stopped answering holds each request for request_timeout_ms
# (40 s for a consumer), past what a supervisor waits after SIGTERM (ECS: 60 s). Bounded by
# STOP_S_MAX, a process exits in time whatever the broker does.
STOP_S_MAX = 10.0

log = structlog.get_logger("kafka")


class MskIamTokenProvider(AbstractTokenProvider):
    """SASL/OAUTHBEARER tokens for MSK IAM, signed with the process's AWS credentials.

    A token is valid 15 minutes and is only read when a connection authenticates, so one is
    reused until a minute before it expires (aiokafka asks at every broker connection).
    """

    REFRESH_BEFORE_S = 60.0

    def __init__(self, region: str) -> None:
        self.region = region
        self._token = ""
        self._expires_at = 0.0  # epoch seconds
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if time.time() >= self._expires_at - self.REFRESH_BEFORE_S:
                # botocore may fetch credentials over HTTP (ECS, IMDS): not on the event loop.
                self._token, expiry_ms = await asyncio.to_thread(self._generate)
                self._expires_at = expiry_ms / 1000
            return self._token

    def _generate(self) -> tuple[str, int]:
        try:
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
        except ImportError as exc:
            raise RuntimeError(
                "OAUTHBEARER on MSK needs aws-msk-iam-sasl-signer-python (the `aws` extra)"
            ) from exc
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        return str(token), int(expiry_ms)


def security_kwargs(
    bootstrap_servers: str,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    region: str | None = None,
    *,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_cafile: str | None = None,
) -> dict[str, Any]:
    """The aiokafka options shared by producers, consumers and admin clients."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": security_protocol,
    }
    if security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = tls_context(ssl_cafile)
    if sasl_mechanism:
        kwargs["sasl_mechanism"] = sasl_mechanism
        kwargs.update(_sasl_credentials(sasl_mechanism, region, sasl_username, sasl_password))
    return kwargs


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying context (certificate and host name): from ``cafile`` alone when given (a
    private CA), the system CAs otherwise (MSK's certificates are signed by a public CA)."""
    if cafile and not os.path.isfile(cafile):
        # ssl's own error ("[X509] no certificate or crl found") does not name the file.
        raise ValueError(f"kafka_ssl_cafile {cafile!r} is not a readable file")
    context: ssl.SSLContext = create_ssl_context(cafile=cafile or None)
    return context


def _sasl_credentials(
    mechanism: str, region: str | None, username: str | None, password: str | None
) -> dict[str, Any]:
    if mechanism == "OAUTHBEARER":
        if not region:
            raise ValueError("OAUTHBEARER (MSK IAM) needs an AWS region")
        return {"sasl_oauth_token_provider": MskIamTokenProvider(region)}
    if mechanism.startswith("SCRAM-"):
        if not (username and password):
            raise ValueError(f"{mechanism} needs a user name and a password")
        # aiokafka names them "plain" for every user/password mechanism, SCRAM included.
        return {"sasl_plain_username": username, "sasl_plain_password": password}
    raise ValueError(f"unsupported SASL mechanism {mechanism!r}")


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security options of every Kafka client, from the settings."""
    password = settings.kafka_sasl_password
    return security_kwargs(
        settings.kafka_bootstrap_servers,
        settings.kafka_security_protocol,
        settings.kafka_sasl_mechanism,
        settings.kafka_region if settings.kafka_sasl_mechanism == "OAUTHBEARER" else None,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=password.get_secret_value() if password else None,
        ssl_cafile=settings.kafka_ssl_cafile,
    )


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name, without the settings prefix
    partitions: int
    retention_ms: int  # -1: keep forever

    def config(self, min_insync_replicas: int = 1) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": str(min_insync_replicas),
        }


# Domain topics keep everything: they can rebuild any consumer (and hold no plaintext prompt:
# domain/personal_data.py). Work topics keep a week, but a dispatch carries its job's prompts
# opened for the worker: a day, far past any dispatch's use (a worker refuses one older than
# its max_dispatch_age_s), so an erased prompt is gone from the broker within a day.
DISPATCH_RETENTION_MS = 24 * 3600 * 1000
TOPICS: tuple[TopicSpec, ...] = (
    *(TopicSpec(t, 6, -1) for t in DOMAIN_TOPICS),
    *(TopicSpec(dispatch_topic(tier), 3, DISPATCH_RETENTION_MS) for tier in GPU_TIERS),
    TopicSpec(REPORTS_TOPIC, 6, WEEK_MS),
    TopicSpec(DLQ_TOPIC, 1, 4 * WEEK_MS),
)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every topic that is missing (idempotent). Returns the names created.

    Replication comes from the settings: 1/1 on the one-broker local stack, 3/2 on MSK.
    Existing topics are left as they are.
    """
    admin = AIOKafkaAdminClient(**connection_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=spec.partitions,
                replication_factor=settings.kafka_replication_factor,
                topic_configs=spec.config(settings.kafka_min_insync_replicas),
            )
            for spec in TOPICS
            if settings.topic(spec.name) not in existing
        ]
        if missing:
            # Another process may create them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


def idempotent_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """acks=all and idempotence: a retried send never duplicates or reorders a partition."""
    options: dict[str, object] = {
        **connection_kwargs(settings),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "request_timeout_ms": 10_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def manual_consumer(
    settings: Settings, group_id: str, *topics: str, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer whose offsets the caller commits itself, after its own effects are durable.
    Without ``topics``, the caller subscribes (e.g. with a rebalance listener)."""
    options: dict[str, object] = {
        **connection_kwargs(settings),
        "group_id": f"{settings.kafka_topic_prefix}{group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*(settings.topic(t) for t in topics), **options)


@contextlib.asynccontextmanager
async def stop_bounded(timeout_s: float = STOP_S_MAX) -> AsyncIterator[None]:
    """Around a process's last Kafka calls (its commit, ``consumer.stop()``,
    ``producer.stop()``): past ``timeout_s`` they are cut short and logged, and the process
    goes on exiting. Nothing is lost: an offset left uncommitted is read again after the
    restart, where every consumer is idempotent."""
    assert timeout_s > 0, f"stop bound {timeout_s} s"
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        log.warning("kafka not left in time", timeout_s=timeout_s)


def rewind(consumer: AIOKafkaConsumer, polled: dict[TopicPartition, list[Any]]) -> None:
    """Back to the batch's first offsets, so the next poll retries it (a partition lost in a
    rebalance meanwhile resumes from its committed offset on its new owner instead)."""
    assigned = consumer.assignment()
    for tp, messages in polled.items():
        if tp in assigned:
            consumer.seek(tp, messages[0].offset)


Polled = dict[TopicPartition, list[Any]]


async def consume_committed(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    handle: Callable[[Polled], Awaitable[object]],
    *,
    max_records: int,
    retryable: tuple[type[BaseException], ...],
    on_retry: Callable[[BaseException, float], None],
    poll_timeout_ms: int = 500,
    backoff_min_s: float = 0.5,
    backoff_max_s: float = 30.0,
) -> None:
    """Poll at most ``max_records``, ``handle`` them, then commit their offsets: at least once,
    so ``handle`` must be idempotent. A ``retryable`` error rewinds to the batch's first offsets
    and retries it after a doubling backoff (``on_retry`` logs it); anything else ends the
    loop, and the process's supervisor restarts it at the last committed offsets."""
    assert max_records > 0 and 0 < backoff_min_s <= backoff_max_s
    backoff_s = backoff_min_s
    while not stop.is_set():
        polled: Polled = {}
        try:
            polled = await consumer.getmany(timeout_ms=poll_timeout_ms, max_records=max_records)
            if not polled:
                continue
            await handle(polled)
            # Only now: every event of the batch is recorded (or was before).
            await consumer.commit({tp: m[-1].offset + 1 for tp, m in polled.items()})
            backoff_s = backoff_min_s
        except retryable as e:
            on_retry(e, backoff_s)
            rewind(consumer, polled)
            await sleep_or_stop(stop, backoff_s)
            backoff_s = min(backoff_s * 2, backoff_max_s)

"""Real round-trip probes of the five backing services.

Used by ``pinksea doctor`` and (later) the API's ``/readyz``. Each probe does real work against
its service (a SQL query, a Kafka produce and consume, Redis SET/GET/DEL, an S3 put/get/delete,
a Stripe API call), never just a TCP connect, and is bounded by a short timeout so a missing
service fails fast. Probes never raise: they return a :class:`CheckResult`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from infra import s3
from infra.settings import Settings

DEFAULT_TIMEOUT_S = 5.0

# What to tell the operator when a service does not answer. The local stack is the usual cause.
_FIX = {
    "postgres": "start the local stack: `make services` (or infra/local/postgres.sh start); "
    "check PINKSEA_DATABASE_URL",
    "kafka": "start the local stack: `make services` (or infra/local/kafka.sh start); "
    "check PINKSEA_KAFKA_BOOTSTRAP_SERVERS",
    "redis": "start the local stack: `make services` (or infra/local/redis.sh start); "
    "check PINKSEA_REDIS_URL",
    "s3": "start the local stack: `make services` (or infra/local/s3.sh start); "
    "check PINKSEA_S3_ENDPOINT_URL and the S3 credentials",
    "stripe": "start the local stack: `make services` (or infra/local/stripe_mock.sh start); "
    "check PINKSEA_STRIPE_API_BASE",
}


@dataclass(frozen=True)
class CheckResult:
    service: str
    address: str
    ok: bool
    version: str = ""
    rtt_ms: float | None = None  # the data round trip itself, connection setup excluded
    error: str = ""

    @property
    def fix(self) -> str:
        return "" if self.ok else _FIX.get(self.service, "run `make services`")


def redact_url(url: str) -> str:
    """host:port/path of a URL, without credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path}"


def describe_error(exc: BaseException) -> str:
    """One line: the exception's type and the message of its root cause (client libraries wrap
    "connection refused" in several layers of prose)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    text = lines[0].strip() if lines else ""
    name = type(exc).__name__
    text = text.removeprefix(f"{name}: ")
    return f"{name}: {text}" if text else name


async def _guard(
    service: str,
    address: str,
    timeout_s: float,
    probe: Callable[[], Awaitable[tuple[str, float]]],
) -> CheckResult:
    try:
        version, rtt_ms = await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        return CheckResult(service, address, False, error=f"no answer within {timeout_s:g}s")
    except Exception as exc:
        return CheckResult(service, address, False, error=describe_error(exc))
    return CheckResult(service, address, True, version=version, rtt_ms=rtt_ms)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# --- PostgreSQL -------------------------------------------------------------------------------


async def check_postgres(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    import asyncpg

    async def probe() -> tuple[str, float]:
        conn = await asyncpg.connect(settings.database_url, timeout=timeout_s)
        try:
            start = time.perf_counter()
            version = await conn.fetchval("select version()")
            rtt = _ms(start)
        finally:
            await conn.close(timeout=timeout_s)
        # "PostgreSQL 15.18 (Debian ...) on x86_64-pc-linux-gnu, ..." -> "PostgreSQL 15.18"
        return " ".join(str(version).split()[:2]), rtt

    return await _guard("postgres", redact_url(settings.database_url), timeout_s, probe)


# --- Kafka ------------------------------------------------------------------------------------


async def _kafka_round_trip(connection: dict[str, Any], topic: str, timeout_ms: int) -> float:
    """Produce one record (acks=all) and read it back by its offset; the round trip in ms."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(**connection, acks="all", request_timeout_ms=timeout_ms)
    consumer = AIOKafkaConsumer(
        **connection,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=timeout_ms,
    )
    await producer.start()
    try:
        await consumer.start()
        try:
            start = time.perf_counter()
            meta = await producer.send_and_wait(topic, payload, key=b"doctor")
            tp = TopicPartition(topic, meta.partition)
            consumer.assign([tp])
            consumer.seek(tp, meta.offset)
            record = await consumer.getone(tp)
            rtt = _ms(start)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    if record.value != payload:
        raise RuntimeError("consumed record differs from the produced one")
    return rtt


async def check_kafka(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    """Create a scratch topic, produce one record, consume it back, delete the topic."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from infra.kafka import connection_kwargs

    bootstrap = settings.kafka_bootstrap_servers
    connection = connection_kwargs(settings)
    timeout_ms = int(timeout_s * 1000)

    async def probe() -> tuple[str, float]:
        topic = settings.topic(f"pinksea.doctor.{uuid.uuid4().hex[:12]}")
        admin = AIOKafkaAdminClient(**connection, request_timeout_ms=timeout_ms)
        await admin.start()
        created = False
        try:
            cluster = await admin.describe_cluster()
            response = await admin.create_topics(
                [
                    NewTopic(
                        topic,
                        num_partitions=1,
                        replication_factor=settings.kafka_replication_factor,
                    )
                ],
                timeout_ms=timeout_ms,
            )
            for _name, code, *detail in response.topic_errors:
                if code:
                    raise RuntimeError(f"create topic {topic}: error {code} {detail}")
            created = True
            rtt = await _kafka_round_trip(connection, topic, timeout_ms)
        finally:
            if created:
                await admin.delete_topics([topic], timeout_ms=timeout_ms)
            await admin.close()
        # The Kafka protocol does not carry the broker's release; show what it does carry.
        brokers = len(cluster.get("brokers", []))
        return f"{brokers} broker{'' if brokers == 1 else 's'}", rtt

    return await _guard("kafka", bootstrap, timeout_s, probe)


# --- Redis ------------------------------------------------------------------------------------


async def check_redis(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    import redis.asyncio as aioredis

    async def probe() -> tuple[str, float]:
        client = aioredis.from_url(
            settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        try:
            info = await client.info("server")
            key = f"{settings.redis_key_prefix}doctor:{uuid.uuid4().hex}"
            value = uuid.uuid4().hex.encode()
            start = time.perf_counter()
            await client.set(key, value, ex=60)
            got = await client.get(key)
            await client.delete(key)
            rtt = _ms(start)
        finally:
            await client.aclose()
        if got != value:
            raise RuntimeError("GET returned a different value than SET stored")
        return f"Redis {info.get('redis_version', '?')}", rtt

    return await _guard("redis", redact_url(settings.redis_url), timeout_s, probe)


# --- S3 ---------------------------------------------------------------------------------------


def s3_client(settings: Settings, timeout_s: float | None = None) -> Any:
    """An S3 client for the configured endpoint (path-style, as local servers need); with
    ``timeout_s``, one attempt bounded by it."""
    bounded = (
        {
            "connect_timeout": timeout_s,
            "read_timeout": timeout_s,
            "retries": {"total_max_attempts": 1},
        }
        if timeout_s
        else {}
    )
    return s3.s3_client(settings, s3={"addressing_style": "path"}, **bounded)


def ensure_bucket(client: Any, bucket: str, region: str) -> None:
    """Create ``bucket`` unless it exists (us-east-1 takes no LocationConstraint)."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(**kwargs)


async def check_s3(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    def probe_sync() -> tuple[str, float]:
        client = s3_client(settings, timeout_s)
        ensure_bucket(client, settings.s3_bucket, settings.s3_region)
        key = f"doctor/{uuid.uuid4().hex}.txt"
        body = uuid.uuid4().bytes
        start = time.perf_counter()
        put = client.put_object(Bucket=settings.s3_bucket, Key=key, Body=body)
        got = client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=settings.s3_bucket, Key=key)
        rtt = _ms(start)
        if got != body:
            raise RuntimeError("GET returned a different object than PUT stored")
        # e.g. "AmazonS3", or "Werkzeug/3.1" for moto's server.
        server = put["ResponseMetadata"].get("HTTPHeaders", {}).get("server", "")
        return (server.split() or ["S3"])[0], rtt

    async def probe() -> tuple[str, float]:
        return await asyncio.to_thread(probe_sync)

    endpoint = redact_url(settings.s3_endpoint_url or "https://s3.amazonaws.com")
    return await _guard("s3", f"{endpoint}/{settings.s3_bucket}", timeout_s, probe)


# --- Stripe -----------------------------------------------------------------------------------


def stripe_client(settings: Settings, timeout_s: float | None = None) -> Any:
    """A StripeClient for the configured API base (stripe-mock locally), without retries when a
    timeout is given (a probe must fail fast)."""
    import stripe

    kwargs: dict[str, Any] = {}
    if settings.stripe_api_base:
        kwargs["base_addresses"] = {"api": settings.stripe_api_base}
    if timeout_s:
        kwargs["http_client"] = stripe.RequestsClient(timeout=timeout_s)
        kwargs["max_network_retries"] = 0
    return stripe.StripeClient(settings.stripe_api_key.get_secret_value(), **kwargs)


async def check_stripe(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    def probe_sync() -> tuple[str, float]:
        client = stripe_client(settings, timeout_s)
        start = time.perf_counter()
        customer = client.v1.customers.create(
            params={"email": "doctor@pinksea.invalid", "description": "pinksea doctor probe"}
        )
        rtt = _ms(start)
        if not str(customer.id).startswith("cus_"):
            raise RuntimeError(f"unexpected customer id {customer.id!r}")
        headers = customer.last_response.headers if customer.last_response else {}
        if "Stripe-Mock-Version" in headers:
            return f"stripe-mock {headers['Stripe-Mock-Version']}", rtt
        return f"Stripe API {headers.get('Stripe-Version', '')}".strip(), rtt

    async def probe() -> tuple[str, float]:
        return await asyncio.to_thread(probe_sync)

    address = redact_url(settings.stripe_api_base or "https://api.stripe.com")
    return await _guard("stripe", address, timeout_s, probe)


# --- all --------------------------------------------------------------------------------------


async def check_all(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[CheckResult]:
    """All five probes concurrently, in a stable order. Kafka gets twice the timeout: its round
    trip creates and deletes a topic."""
    return list(
        await asyncio.gather(
            check_postgres(settings, timeout_s),
            check_kafka(settings, timeout_s * 2),
            check_redis(settings, timeout_s),
            check_s3(settings, timeout_s),
            check_stripe(settings, timeout_s),
        )
    )

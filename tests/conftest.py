"""Session fixtures that connect to the running local stack (``make services``).

They never start fakes: a service that does not answer is a test ERROR naming ``make services``,
never a skip. Every fixture is lazy, so tests that request none of them (tests/unit) run without
any service. A session is isolated from other sessions sharing the stack by:

- its own PostgreSQL database ``pinksea_t_<time>_<random>`` (dropped at the end),
- its own Kafka topic prefix ``t<run id>.`` (its topics deleted at the end),
- its own Redis key prefix ``t<run id>:`` (its keys deleted at the end),
- its own S3 bucket ``pinksea-t-<run id>`` (emptied and deleted at the end).

Tests that use any of these fixtures are marked ``integration`` automatically.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio

from infra import health
from infra.settings import Settings

T = TypeVar("T")

STACK_FIXTURES = frozenset(
    {
        "database_url",
        "settings",
        "s3_bucket",
        "s3_client",
        "redis_sync",
        "redis_client",
        "kafka_bootstrap",
        "stripe_client",
    }
)
# Databases of sessions that died before their teardown are dropped after this long.
STALE_DATABASE_S = 12 * 3600
PROBE_TIMEOUT_S = 5


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def stack_unreachable(service: str, address: str, exc: BaseException) -> NoReturn:
    message = (
        f"{service} at {address} does not answer: the integration tests need the local stack, "
        "run `make services` (check it with `make services-status` or `pinksea doctor`).\n"
        f"cause: {health.describe_error(exc)}"
    )
    # `from None`: the report is this message, not the client library's exception chain.
    raise pytest.fail.Exception(message, pytrace=False) from None


@contextlib.contextmanager
def reachable(service: str, address: str) -> Iterator[None]:
    """Turn any failure inside the block into :func:`stack_unreachable`."""
    try:
        yield
    except Exception as exc:
        stack_unreachable(service, address, exc)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread, so that sync session
    fixtures never touch pytest-asyncio's session loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


# --- identity of this session --------------------------------------------------------------


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    """The stack as configured by PINKSEA_* (defaults: the local stack), not isolated."""
    return Settings()


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_url(stack_settings: Settings, run_id: str) -> Iterator[str]:
    """DSN of a fresh database of this session (the pinksea role may create more beside it)."""
    import psycopg
    from psycopg import sql

    server_url = stack_settings.database_url
    address = health.redact_url(server_url)
    with reachable("PostgreSQL", address):
        admin = psycopg.connect(server_url, autocommit=True, connect_timeout=PROBE_TIMEOUT_S)
    now = int(time.time())
    name = f"pinksea_t_{now}_{run_id[:6]}"
    with admin:
        stale = admin.execute(
            "select datname from pg_database where datname ~ '^pinksea_t_[0-9]+_'"
        ).fetchall()
        for (old,) in stale:
            if now - int(old.split("_")[2]) > STALE_DATABASE_S:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(old))
                )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=PROBE_TIMEOUT_S) as c:
            c.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


# --- S3 ------------------------------------------------------------------------------------

# The local AWS besides S3: moto's server (infra/local/aws.sh) for the tests that drive Cognito,
# CloudWatch, ECS or Auto Scaling. S3 itself is SeaweedFS, which checks signatures.
LOCAL_AWS_URL = f"http://127.0.0.1:{os.environ.get('AWS_PORT', '9100')}"


@pytest.fixture(scope="session")
def s3_client(stack_settings: Settings) -> Any:
    """A boto3 S3 client for the stack's S3 endpoint."""
    with reachable("S3", stack_settings.s3_endpoint_url or "AWS"):
        health.s3_client(stack_settings, PROBE_TIMEOUT_S).list_buckets()
    return health.s3_client(stack_settings)


@pytest.fixture(scope="session")
def s3_bucket(s3_client: Any, stack_settings: Settings, run_id: str) -> Iterator[str]:
    """A bucket of this session's own; emptied and deleted at the end."""
    bucket = f"pinksea-t-{run_id}"
    sweep_stale_buckets(s3_client, "pinksea-t-")
    health.ensure_bucket(s3_client, bucket, stack_settings.s3_region)
    try:
        yield bucket
    finally:
        delete_bucket(s3_client, bucket)


def sweep_stale_buckets(s3_client: Any, prefix: str) -> None:
    """The buckets named ``prefix``... of sessions that died before their teardown (older
    than ``STALE_DATABASE_S``, which no session lasts) deleted, as their databases are. Best
    effort: another session starting now may be sweeping the same one."""
    from botocore.exceptions import ClientError

    oldest = datetime.now(UTC) - timedelta(seconds=STALE_DATABASE_S)
    for bucket in s3_client.list_buckets()["Buckets"]:
        if bucket["Name"].startswith(prefix) and bucket["CreationDate"] < oldest:
            with contextlib.suppress(ClientError):
                delete_bucket(s3_client, bucket["Name"])


def delete_bucket(s3_client: Any, bucket: str) -> None:
    """``bucket`` emptied (every object, a page of 1000 at a time) and deleted: a session's
    bucket left behind takes a volume of the local S3 (SeaweedFS) for good, and after a few
    hundred of them every upload fails."""
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3_client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3_client.delete_bucket(Bucket=bucket)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_sync(stack_settings: Settings, run_id: str) -> Iterator[Any]:
    """A sync redis client; this session's keys (prefix ``t<run id>:``) deleted at the end."""
    import redis

    client = redis.Redis.from_url(stack_settings.redis_url, socket_connect_timeout=PROBE_TIMEOUT_S)
    with reachable("Redis", health.redact_url(stack_settings.redis_url)):
        client.ping()
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"t{run_id}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(redis_sync: Any, stack_settings: Settings) -> AsyncIterator[Any]:
    """An asyncio redis client (one per test, on the session loop)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(stack_settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- Kafka ---------------------------------------------------------------------------------


async def _kafka_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000)
    )
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


async def _delete_kafka_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_settings: Settings, run_id: str) -> Iterator[str]:
    """The bootstrap servers; this session's topics (prefix ``t<run id>.``) deleted at the end."""
    bootstrap = stack_settings.kafka_bootstrap_servers
    with reachable("Kafka", bootstrap):
        run_async(lambda: asyncio.wait_for(_kafka_topics(bootstrap), PROBE_TIMEOUT_S * 2))
    try:
        yield bootstrap
    finally:
        run_async(lambda: _delete_kafka_topics(bootstrap, f"t{run_id}."))


# --- Stripe --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stripe_client(stack_settings: Settings) -> Any:
    """A ``stripe.StripeClient`` pointed at the stack's Stripe API (stripe-mock locally)."""
    client = health.stripe_client(stack_settings, timeout_s=10.0)
    with reachable("Stripe", stack_settings.stripe_api_base or "api.stripe.com"):
        client.v1.customers.list(params={"limit": 1})
    return client


# --- all of it -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def settings(
    stack_settings: Settings,
    database_url: str,
    s3_bucket: str,
    kafka_bootstrap: str,
    redis_sync: Any,
    run_id: str,
) -> Settings:
    """Settings of this session: its own database, topic prefix, Redis key prefix and bucket.

    Requesting it checks that the whole stack answers (PostgreSQL, S3, Kafka, Redis)."""
    return stack_settings.model_copy(
        update={
            "database_url": database_url,
            "read_database_url": None,
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic_prefix": f"t{run_id}.",
            "redis_key_prefix": f"t{run_id}:",
            "s3_bucket": s3_bucket,
        }
    )

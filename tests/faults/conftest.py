"""Fixtures of the fault tests: each runs the API in-process (httpx ASGI transport, with its
lifespan) against a PostgreSQL of its own, which the test then breaks; Redis, Kafka and S3 are
the shared local stack's, under prefixes of the test's own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI

from api.app import create_app
from api.auth import sign_dev_token
from infra.settings import Settings

# A small, valid submission (tests/api/conftest.py's TINY) with a long prompt: every accepted
# job writes a few KiB of events, so a full disk is reached in few requests.
JOB: dict[str, Any] = {
    "model": "tiny-sd",
    "prompt": "a lighthouse in a storm, " * 40,
    "steps": 4,
    "width": 64,
    "height": 64,
}


def fault_settings(database_url: str, tmp: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,
        read_database_url=None,
        redis_key_prefix=f"tf{tag}:",
        kafka_topic_prefix=f"tf{tag}.",
        s3_bucket=f"tf-{tag}",
        dev_jwt_enabled=True,
        dev_jwt_key_path=str(tmp / "dev-jwt.pem"),
        rate_limit_multiplier=100.0,
        read_your_writes_timeout_s=1.0,
        db_pool_size=4,
        log_json=False,
        **overrides,
    )


def auth(settings: Settings, user: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign_dev_token(settings, user)}", **headers}


@contextlib.asynccontextmanager
async def in_process_api(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API in-process; its Redis keys (the settings' own prefix) deleted at the end."""
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
                yield app, c
    finally:
        redis = aioredis.from_url(settings.redis_url)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{settings.redis_key_prefix}*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()

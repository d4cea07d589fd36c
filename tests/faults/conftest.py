"""Fixtures of the fault tests: each runs the API in-process (httpx ASGI transport, with its
lifespan) against a PostgreSQL of its own, which the test then breaks; Redis, Kafka and S3 are
the shared local stack's, under prefixes of the test's own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis.asyncio as aioredis
from fastapi import FastAPI

from api.app import create_app
from api.auth import sign_dev_token
from infra.settings import Settings

REPO = Path(__file__).resolve().parents[2]

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


def assert_unavailable(response: httpx.Response) -> None:
    """A 503 problem+json that says when to retry."""
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == 503


def accepted_job_ids(database_url: str, user: str) -> set[str]:
    """The user's jobs in the jobs read model."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select job_id::text from jobs where user_id = %s", (user,)).fetchall()
    return {r[0] for r in rows}


def ledger_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    """``pinksea ledger verify`` over ``database_url``: every event replayed, the read models
    recomputed and compared, the ledger's invariants checked."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "ledger", "verify", "--database-url", database_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PINKSEA_")},
    )

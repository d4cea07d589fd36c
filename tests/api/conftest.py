"""Fixtures of the API tests, on the real local stack (make services).

One database, Redis prefix, topic prefix and S3 bucket for the whole API session; each test
works as its own users, so tests do not see one another. The app runs in-process behind an
httpx ASGI transport (with its lifespan); the SSE and schemathesis tests run real uvicorn
processes on free ports instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import sign_dev_token
from api.services import Services, s3_client
from domain.application import PinkseaApplication
from domain.jobs import ImageRecord
from eventstore.contract import envelope_for
from infra.settings import Settings
from tests.api.project_now import project_now
from tests.conftest import delete_bucket, sweep_stale_buckets

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY: dict[str, Any] = {
    "model": "tiny-sd",
    "prompt": "a lighthouse",
    "steps": 4,
    "width": 64,
    "height": 64,
}


def _server_url(request: pytest.FixtureRequest) -> str:
    try:
        return str(request.getfixturevalue("database_url"))
    except (pytest.FixtureLookupError, Exception):
        return os.environ.get("PINKSEA_DATABASE_URL", Settings().database_url)


@pytest.fixture(scope="session")
def api_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the API tests' own on the configured server."""
    server = _server_url(request)
    name = f"pinksea_api_{uuid.uuid4().hex[:10]}"
    base = server.rsplit("/", 1)[0]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def api_settings(
    api_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The session's settings; its bucket (``ta-<tag>``) emptied and deleted at the end."""
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        database_url=api_database_url,
        redis_key_prefix=f"ta{tag}:",
        kafka_topic_prefix=f"ta{tag}.",
        s3_bucket=f"ta-{tag}",
        dev_jwt_enabled=True,
        dev_jwt_key_path=str(tmp_path_factory.mktemp("jwt") / "dev-jwt.pem"),
        rate_limit_multiplier=100.0,
        read_your_writes_timeout_s=1.0,
        sse_poll_interval_s=0.05,
        sse_heartbeat_s=1.0,
        db_pool_size=8,
        log_json=False,
    )
    s3 = s3_client(settings)
    sweep_stale_buckets(s3, "ta-")
    s3.create_bucket(
        Bucket=settings.s3_bucket,
        CreateBucketConfiguration={"LocationConstraint": settings.s3_region},
    )
    try:
        yield settings
    finally:
        delete_bucket(s3, settings.s3_bucket)


@pytest.fixture(scope="session")
async def api_app(api_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="session")
def services(api_app: FastAPI) -> Services:
    return api_app.state.services


@pytest.fixture(scope="session")
async def client(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


@dataclass
class Kit:
    """What a test needs to act as users and admins and to move the read models along."""

    settings: Settings
    services: Services
    client: httpx.AsyncClient

    @property
    def app(self) -> PinkseaApplication:
        return self.services.application

    def token(self, user: str, *, admin: bool = False, **kw: Any) -> str:
        return sign_dev_token(self.settings, user, admin=admin, **kw)

    def auth(self, user: str, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, admin=admin)}"}

    async def project(self) -> int:
        return await project_now(self.app, self.settings.database_url)

    async def submit(self, user: str, key: str | None = None, **params: Any) -> httpx.Response:
        headers = self.auth(user)
        if key:
            headers["Idempotency-Key"] = key
        return await self.client.post("/v1/jobs", json={**TINY, **params}, headers=headers)

    async def set_plan(self, user: str, plan: str, **body: Any) -> None:
        r = await self.client.put(
            f"/v1/admin/users/{user}/plan",
            json={"plan": plan, "reason": "test", **body},
            headers=self.auth("root", admin=True),
        )
        assert r.status_code == 200, r.text

    def run_job(
        self,
        job_id: uuid.UUID | str,
        *,
        gpu_ms: int = 500,
        images: list[ImageRecord] | None = None,
        complete: bool = True,
    ) -> None:
        """Drive an accepted job as the scheduler, a worker and the settler would."""
        job_id = uuid.UUID(str(job_id))
        at = datetime.now(UTC)
        self.app.record_dispatch(job_id, attempt=1, worker_id="w-test", at=at)
        self.app.record_start(job_id, attempt=1, worker_id="w-test", gpu="T4", at=at)
        if complete:
            self.app.complete_job(
                job_id,
                attempt=1,
                gpu_ms=gpu_ms,
                cuda_ms=gpu_ms - 5,
                images=images or [],
                at=at,
            )


@pytest.fixture
def kit(api_settings: Settings, services: Services, client: httpx.AsyncClient) -> Kit:
    return Kit(api_settings, services, client)


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


async def stored_texts(kit: Kit, aggregate_id: str) -> list[str]:
    """Everything the store and the event contract keep of one aggregate's events, as text:
    its raw stored rows and their public envelopes (what a test of sealing searches)."""
    rows = await kit.services.pool.fetch(
        "SELECT state FROM pinksea_events WHERE originator_id = $1", uuid.UUID(aggregate_id)
    )
    texts = [bytes(r["state"]).decode(errors="replace") for r in rows]
    app = kit.app
    for n in app.recorder.select_notifications(start=1, limit=100_000):
        if n.originator_id == uuid.UUID(aggregate_id):
            texts.append(envelope_for(app.mapper.to_domain_event(n), n.id).to_bytes().decode())
    return texts


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["detail"] and body["status"] == response.status_code
    return str(body["type"]).removeprefix("https://pinksea.dev/problems/")


# --------------------------------------------------------------------- uvicorn processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINKSEA_")}
    fields = (
        "database_url",
        "redis_key_prefix",
        "kafka_topic_prefix",
        "s3_bucket",
        "dev_jwt_enabled",
        "dev_jwt_key_path",
        "rate_limit_multiplier",
        "read_your_writes_timeout_s",
        "sse_poll_interval_s",
        "sse_heartbeat_s",
        "db_pool_size",
        "log_json",
        "redis_url",
        "s3_endpoint_url",
        "kafka_bootstrap_servers",
    )
    for name in fields:
        value = getattr(settings, name)
        if isinstance(value, bool):
            value = str(value).lower()
        if value is not None:
            env[f"PINKSEA_{name.upper()}"] = str(value)
    env["PINKSEA_LOG_LEVEL"] = "WARNING"
    return env


# `pinksea api` as the console script runs it.
CLI = "from cli.main import app; app(prog_name='pinksea')"


@contextlib.contextmanager
def api_subprocess(
    settings: Settings, *args: str, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``pinksea api`` in a subprocess on a free port, with extra options ``args`` and extra
    environment ``env``; yields its base URL and the process (a test may kill it)."""
    port = free_port()
    # A file, not a pipe: a pipe nobody reads fills with access logs and blocks the server.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "api", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env={**process_env(settings), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    err = log.read().decode(errors="replace")
                    raise RuntimeError(f"the API process exited:\n{err[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the API process did not start in 60 s")
                time.sleep(0.2)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def api_process(settings: Settings, *args: str, **env: str) -> Iterator[str]:
    """``pinksea api`` in a subprocess (see api_subprocess); yields its base URL."""
    with api_subprocess(settings, *args, **env) as (url, _):
        yield url


@pytest.fixture(scope="session")
def api_pair(api_settings: Settings) -> Iterator[tuple[str, str]]:
    """Two API processes on the same stack: A and B."""
    with api_process(api_settings) as a, api_process(api_settings) as b:
        yield a, b

""".github/scripts/smoke.py, the release pipeline's E2E check, against the real Pinksea API.

As the pipeline runs it against staging: `pinksea api` in its own process on the local stack,
with every other process of the backend running (relay, projections, scheduler, settler and a
GPU worker on the tiny model, on CPU, as tests/e2e/test_generation_flow.py runs them), and a
Cognito user pool on the local AWS (moto's server, infra/local/aws.sh) that the API trusts:

- jwt_issuer is what moto puts in the tokens' `iss`, https://cognito-idp.<region>.amazonaws.com/
  <pool id> (the real Cognito issuer), and jwks_url moto's <endpoint>/<pool id>/.well-known/
  jwks.json, so the API verifies moto's RS256 ID tokens as it verifies Cognito's;
  jwt_audience is the pool's web client, and dev tokens are off;
- smoke.py signs in as the web app does (USER_SRP_AUTH with pycognito on that client: boto3
  reaches moto through AWS_ENDPOINT_URL, as the workflow's runner reaches AWS), calls /v1/me,
  runs a job to completion and fetches its image from the presigned S3 URL (SeaweedFS).

moto runs the SRP exchange but does not check the password proof (any password signs in), so
a wrong password is not a failure these tests can show.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from infra.settings import Settings
from tests.api.conftest import api_process, free_port
from tests.conftest import LOCAL_AWS_URL, reachable
from tests.e2e.test_generation_flow import Platform
from tests.integration.streaming_kit import fresh_database

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _load_smoke() -> ModuleType:
    path = REPO / ".github" / "scripts" / "smoke.py"
    spec = importlib.util.spec_from_file_location("release_smoke", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke()


@dataclass(frozen=True)
class UserPool:
    """A Cognito user pool with a public web client and one confirmed user, on moto."""

    aws: dict[str, Any]  # boto3 client arguments of the local AWS
    pool_id: str
    client_id: str
    username: str
    password: str

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.aws['region_name']}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.aws['endpoint_url'].rstrip('/')}/{self.pool_id}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def user_pool(settings: Settings) -> Iterator[UserPool]:
    aws = {
        "endpoint_url": LOCAL_AWS_URL,
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
    }
    cognito = boto3.client("cognito-idp", **aws)
    with reachable("the local AWS (moto server, infra/local/aws.sh)", LOCAL_AWS_URL):
        pool = cognito.create_user_pool(
            PoolName=f"pinksea-t{uuid.uuid4().hex[:8]}",
            UsernameAttributes=["email"],
            Policies={"PasswordPolicy": {"MinimumLength": 12}},
        )["UserPool"]
    try:
        client = cognito.create_user_pool_client(
            UserPoolId=pool["Id"],
            ClientName="web",
            GenerateSecret=False,  # the web app's public client
            ExplicitAuthFlows=["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]
        username, password = "e2e@pinksea.example.com", f"Pw-{uuid.uuid4().hex}"
        cognito.admin_create_user(
            UserPoolId=pool["Id"], Username=username, MessageAction="SUPPRESS"
        )
        cognito.admin_set_user_password(
            UserPoolId=pool["Id"], Username=username, Password=password, Permanent=True
        )
        yield UserPool(aws, pool["Id"], client["ClientId"], username, password)
    finally:
        cognito.delete_user_pool(UserPoolId=pool["Id"])


@pytest.fixture(scope="module")
def stack(settings: Settings) -> Iterator[Settings]:
    """The session's Redis prefix and bucket; a database and topics of this module's own."""
    with fresh_database(settings.database_url) as url:
        yield settings.model_copy(
            update={
                "database_url": url,
                "kafka_topic_prefix": f"{settings.kafka_topic_prefix}s{uuid.uuid4().hex[:8]}.",
            }
        )


@pytest.fixture(scope="module")
async def platform(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """Relay, projections, scheduler, settler and one GPU worker (tiny model, CPU)."""
    p = Platform(stack, tmp_path_factory.mktemp("models"))
    try:
        await p.start(workers=1)
        yield p
    finally:
        await p.close()


@contextlib.contextmanager
def api_trusting(settings: Settings, pool: UserPool) -> Iterator[str]:
    """`pinksea api` in its own process, trusting the pool's tokens only; yields its URL."""
    with api_process(
        settings,
        PINKSEA_JWT_ISSUER=pool.issuer,
        PINKSEA_JWKS_URL=pool.jwks_url,
        PINKSEA_JWT_AUDIENCE=pool.client_id,
        PINKSEA_DEV_JWT_ENABLED="false",
    ) as url:
        yield url


@pytest.fixture(scope="module")
def api(platform: Platform, user_pool: UserPool) -> Iterator[str]:
    with api_trusting(platform.settings, user_pool) as url:
        yield url


@pytest.fixture
def signed_in_env(user_pool: UserPool, monkeypatch: pytest.MonkeyPatch) -> UserPool:
    """What the workflow's E2E step has: the pool, the client, the user (and here, the local
    AWS as the endpoint boto3 reaches, with its keys)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", str(user_pool.aws["endpoint_url"]))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", user_pool.aws["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", user_pool.aws["aws_secret_access_key"])
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "E2E_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2E_USER_POOL_ID", user_pool.pool_id)
    monkeypatch.setenv("E2E_CLIENT_ID", user_pool.client_id)
    monkeypatch.setenv("E2E_USERNAME", user_pool.username)
    monkeypatch.setenv("E2E_PASSWORD", user_pool.password)
    return user_pool


async def run_smoke(*argv: str) -> int:
    """smoke.main in a thread: the platform's processes run on this event loop meanwhile."""
    return int(await asyncio.to_thread(smoke.main, list(argv)))


async def test_smoke_health_sign_in_and_a_job(
    api: str,
    platform: Platform,
    signed_in_env: UserPool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_smoke("--base-url", api, "--model", "tiny-sd", "--job-timeout", "120") == 0
    out = capsys.readouterr().out
    assert "smoke check passed" in out and "GET /v1/me -> 200" in out
    assert "GET <presigned image URL> -> 200 image/png" in out
    # the API took moto's Cognito ID token: the job the smoke check ran is the pool user's (the
    # token's sub), in the event store, completed and billed
    attributes = boto3.client("cognito-idp", **signed_in_env.aws).admin_get_user(
        UserPoolId=signed_in_env.pool_id, Username=signed_in_env.username
    )["UserAttributes"]
    sub = next(a["Value"] for a in attributes if a["Name"] == "sub")
    assert f"signed in as {sub}, plan " in out
    (job_line,) = [line for line in out.splitlines() if ": completed, GPU " in line]
    job = platform.app.job(uuid.UUID(job_line.split()[1].rstrip(":")))
    assert job.user_id == sub and job.parameters["model"] == "tiny-sd"
    assert job.status == "completed" and job.gpu_ms > 0 and job.charged_mc > 0


async def test_smoke_fails_on_a_failed_job(
    api: str, platform: Platform, signed_in_env: UserPool, capsys: pytest.CaptureFixture[str]
) -> None:
    # sd-1.5 is in the user's plan, but the local worker has no weights for it: every attempt
    # fails on the worker and the job ends failed, billed nothing
    assert await run_smoke("--base-url", api, "--model", "sd-1.5", "--job-timeout", "120") == 1
    out = capsys.readouterr().out
    (error,) = [line for line in out.splitlines() if line.startswith("::error::")]
    assert error.startswith("::error::smoke check failed: job ")
    # users read the platform failure's fixed sentence (api/failures.py); the event keeps it all
    assert " failed: The run failed on our side" in error
    job = platform.app.job(uuid.UUID(error.split()[4]))
    assert job.status == "failed" and job.charged_mc == 0
    assert "ModelUnavailable: model 'sd-1.5'" in (job.failure or "")


async def test_smoke_needs_credentials_without_a_token(
    api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("E2E_TOKEN", "E2E_USERNAME", "E2E_PASSWORD", "E2E_USER_POOL_ID", "E2E_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert await run_smoke("--base-url", api) == 1
    out = capsys.readouterr().out
    assert "GET /readyz -> 200" in out  # the health part passed against the API
    assert "sign-in needs --user-pool-id, --client-id, E2E_USERNAME, E2E_PASSWORD" in out


async def test_smoke_fails_with_a_token_of_another_pool(
    api: str,
    signed_in_env: UserPool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # moto signs every pool's tokens with the same key: only the issuer tells them apart
    cognito = boto3.client("cognito-idp", **signed_in_env.aws)
    other = cognito.create_user_pool(PoolName=f"pinksea-t{uuid.uuid4().hex[:8]}")["UserPool"]
    try:
        client = cognito.create_user_pool_client(
            UserPoolId=other["Id"], ClientName="web", ExplicitAuthFlows=["ALLOW_USER_SRP_AUTH"]
        )["UserPoolClient"]
        cognito.admin_create_user(UserPoolId=other["Id"], Username="eve", MessageAction="SUPPRESS")
        cognito.admin_set_user_password(
            UserPoolId=other["Id"], Username="eve", Password="Pw-eve-0123456789", Permanent=True
        )
        token = smoke.sign_in(other["Id"], client["ClientId"], "eve", "Pw-eve-0123456789")
    finally:
        cognito.delete_user_pool(UserPoolId=other["Id"])
    monkeypatch.setenv("E2E_TOKEN", token)
    assert await run_smoke("--base-url", api) == 1
    out = capsys.readouterr().out
    assert "::error::smoke check failed: GET /v1/me: 401" in out
    assert "issuer is not trusted" in out


async def test_smoke_health_only(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--health-only", "--duration", "0", "--interval", "0"]
    assert await run_smoke("--base-url", api, *argv) == 0
    out = capsys.readouterr().out
    assert "GET /healthz -> 200" in out and "/v1/" not in out
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert await run_smoke("--base-url", dead, *argv, "--ready-timeout", "0") == 1

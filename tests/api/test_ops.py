"""Operations and the edge: probes, metrics, the OpenAPI document, body limits, unknown
routes, and what happens when Redis is not there (rate limits fail open, caches are skipped)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from api.app import create_app
from api.auth import JwtVerifier, sign_dev_token
from api.cache import JsonCache
from api.ratelimit import RateLimiter
from infra.db import create_pool
from infra.settings import Settings
from tests.api.conftest import CLI, REPO, TINY, Kit, problem_type, process_env

pytestmark = pytest.mark.integration

# Public routes; Stripe webhooks authenticate by their signature (400 when it fails).
NO_AUTH = {"/healthz", "/readyz", "/metrics", "/v1/plans", "/v1/webhooks/stripe"}


async def test_health_and_readiness(kit: Kit) -> None:
    assert (await kit.client.get("/healthz")).json() == {"status": "ok"}
    r = await kit.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"postgres": "ok", "redis": "ok", "kafka": "ok", "s3": "ok"}


async def test_readiness_names_what_is_down(kit: Kit) -> None:
    bucket = kit.settings.s3_bucket
    kit.settings.s3_bucket = "no-such-bucket-anywhere"
    try:
        r = await kit.client.get("/readyz")
    finally:
        kit.settings.s3_bucket = bucket
    assert r.status_code == 503 and problem_type(r) == "service-unavailable"
    assert r.json()["checks"]["s3"] != "ok" and r.json()["checks"]["postgres"] == "ok"


async def test_metrics(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    r = await kit.client.get("/metrics")
    assert r.status_code == 200
    assert 'pinksea_api_requests_total{method="GET",route="/v1/me",status="200"}' in r.text


async def test_openapi_documents_every_error(kit: Kit) -> None:
    doc = (await kit.client.get("/openapi.json")).json()
    assert (await kit.client.get("/docs")).status_code == 200
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            errors = {int(s) for s in op["responses"] if s.isdigit() and int(s) >= 400}
            if path not in NO_AUTH:
                assert {401, 429, 503} <= errors, (method, path, errors)
            if path not in {"/healthz", "/metrics"}:
                assert errors, (method, path)
            for status in errors:
                content = op["responses"][str(status)]["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)
            if "{" in path and path not in NO_AUTH:
                assert 404 in errors or path.endswith("/plan"), (method, path)
    assert "422" in doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"402", "403", "409"} <= set(doc["paths"]["/v1/jobs"]["post"]["responses"])


async def test_body_too_large_is_413(kit: Kit, user: str) -> None:
    limit = kit.settings.api_max_body_bytes
    huge = {**TINY, "prompt": "x" * (limit + 10)}
    r = await kit.client.post("/v1/jobs", json=huge, headers=kit.auth(user))
    assert r.status_code == 413 and problem_type(r) == "payload-too-large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny-sd", "prompt": "'
        for _ in range(limit // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'

    r = await kit.client.post(
        "/v1/jobs",
        content=chunks(),
        headers={**kit.auth(user), "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text


async def test_unknown_route_and_method(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/nothing", headers=kit.auth(user))
    assert r.status_code == 404 and problem_type(r) == "not-found"
    r = await kit.client.put("/v1/jobs", headers=kit.auth(user))
    assert r.status_code == 405 and problem_type(r) == "method-not-allowed"


async def test_nul_characters_are_refused_not_crashed(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/admin/users?query=a%00b", headers=kit.auth("a1", admin=True))
    assert r.status_code == 422
    r = await kit.submit(user, prompt="a\x00b")
    assert r.status_code == 422


async def test_rate_limiter_fails_open_without_redis() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 1)
    )
    limiter = RateLimiter(dead, "t:")
    assert await limiter.hit("submit", "u", "trial") is None
    assert limiter.breaker.open  # the next requests do not even try
    started = time.monotonic()
    assert await limiter.hit("submit", "u", "trial") is None
    assert time.monotonic() - started < 0.01
    cache = JsonCache(dead, "t:", "balance", 5)
    await cache.set("u", {"a": 1})
    assert await cache.get("u") is None
    await dead.aclose()


async def test_rate_limits_scale_with_plan(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    trial = int(r.headers["ratelimit-limit"])
    await kit.set_plan(user, "studio")
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert int(r.headers["ratelimit-limit"]) == trial * 12
    assert r.headers["ratelimit-policy"].endswith(";w=60")


async def test_lone_surrogates_are_refused_not_crashed(kit: Kit, user: str) -> None:
    body = b'{"model": "tiny-sd", "prompt": "a\\ud800b", "steps": 4, "width": 64, "height": 64}'
    r = await kit.client.post(
        "/v1/jobs", content=body, headers={**kit.auth(user), "Content-Type": "application/json"}
    )
    assert r.status_code in (202, 422), r.text
    await kit.project()  # whatever was accepted must not break the projections


async def test_body_that_is_not_text_is_400(kit: Kit, user: str) -> None:
    r = await kit.client.post(
        "/v1/jobs",
        content=b"\xff\xfe\x00garbage",
        headers={**kit.auth(user), "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422)
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_database_outage_is_503_not_500(api_settings: Settings, user: str) -> None:
    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        token = sign_dev_token(api_settings, user)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/v1/jobs", headers=headers)).status_code == 200
            await services.pool.close()  # the read side's connections are gone
            r = await client.get("/v1/jobs", headers=headers)
            assert r.status_code == 503, r.text
            assert problem_type(r) == "service-unavailable"
            assert r.headers["retry-after"]
            services.pool = await create_pool(api_settings)  # for a clean shutdown


def test_dev_token_cli_makes_accepted_tokens(api_settings: Settings) -> None:
    env = {**process_env(api_settings)}
    out = subprocess.run(
        [sys.executable, "-c", CLI, "dev-token", "--user", "cli-user", "--admin"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = out.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "cli-user" and claims["cognito:groups"] == ["admin"]
    verifier = JwtVerifier(api_settings)
    principal = asyncio.run(verifier.verify(token))
    assert principal.user_id == "cli-user" and principal.is_admin

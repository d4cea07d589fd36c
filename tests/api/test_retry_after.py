"""Every 429 and 503 carries ``Retry-After`` in seconds (issue 19)."""

from __future__ import annotations

import httpx
from fastapi.responses import JSONResponse

from api import problems as p
from api.app import create_app
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type


def _seconds(r: httpx.Response) -> int:
    value = r.headers.get("retry-after")
    assert value is not None and value.isdigit(), (r.status_code, r.headers)
    return int(value)


async def test_rate_limit_429(kit: Kit, user: str) -> None:
    limiter = kit.services.rate_limiter
    saved = limiter.multiplier
    limiter.multiplier = 0.1  # trial: 2 submissions a minute
    try:
        codes = [await kit.submit(user, key=f"ra{i}") for i in range(3)]
    finally:
        limiter.multiplier = saved
    limited = codes[-1]
    assert limited.status_code == 429 and problem_type(limited) == "rate-limited"
    assert 1 <= _seconds(limited) <= 60


async def test_queue_limit_429(kit: Kit, user: str) -> None:
    for i in range(10):  # the trial plan's open-job limit
        assert (await kit.submit(user, key=f"qa{i}")).status_code == 202
    r = await kit.submit(user, key="qa10")
    assert r.status_code == 429 and problem_type(r) == "queue-limit"
    assert _seconds(r) == p.RETRY_AFTER_S["queue-limit"]
    assert "location" not in r.headers  # a refusal is saved nowhere: no job to point to


async def test_read_your_writes_503(kit: Kit, user: str) -> None:
    body = (await kit.submit(user)).json()
    headers = {**kit.auth(user), "X-Min-Position": str(body["position"])}
    r = await kit.client.get(f"/v1/jobs/{body['job_id']}", headers=headers)
    assert r.status_code == 503 and problem_type(r) == "not-yet-consistent"
    assert _seconds(r) == 1


def test_every_429_and_503_problem_type_gets_one() -> None:
    kinds = [v for v in vars(p).values() if isinstance(v, p.ProblemType) and v.status in (429, 503)]
    assert {k.slug for k in kinds} >= {"rate-limited", "queue-limit", "not-yet-consistent"}
    for kind in kinds:
        response = p.problem_response(kind, "Retry.")
        assert response.headers["retry-after"].isdigit(), kind
        # A producer's own value wins.
        response = p.problem_response(kind, "Retry.", headers={"retry-after": "7"})
        assert response.headers["retry-after"] == "7"


async def test_the_edge_adds_one_to_any_429_or_503(api_settings: Settings) -> None:
    app = create_app(api_settings)

    @app.get("/bare/{status}")
    async def bare(status: int) -> JSONResponse:
        return JSONResponse({}, status_code=status)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        for status in (429, 503):
            assert _seconds(await c.get(f"/bare/{status}")) >= 1
        assert "retry-after" not in (await c.get("/bare/500")).headers

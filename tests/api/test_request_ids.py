"""Request ids (issue 19): ``Request-Id`` on every response, echoed when the client sent a safe
one, the same value as a problem body's ``request_id`` and bound into the request's logs."""

from __future__ import annotations

import re

import httpx
import pytest
import structlog
from fastapi import FastAPI
from structlog.testing import capture_logs

from api.app import create_app
from infra.settings import Settings
from tests.api.conftest import Kit

GENERATED = re.compile(r"req_[A-Za-z0-9_-]{24}")


async def test_every_response_has_one(kit: Kit, user: str) -> None:
    ok = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert ok.status_code == 200
    assert GENERATED.fullmatch(ok.headers["request-id"])
    missing = await kit.client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert GENERATED.fullmatch(missing.headers["request-id"])
    assert missing.json()["request_id"] == missing.headers["request-id"]
    unauthorized = await kit.client.get("/v1/me")
    assert unauthorized.status_code == 401
    assert unauthorized.json()["request_id"] == unauthorized.headers["request-id"]
    assert len({ok.headers["request-id"], missing.headers["request-id"]}) == 2


async def test_a_5xx_problem_carries_it(kit: Kit, user: str) -> None:
    body = (await kit.submit(user)).json()
    headers = {**kit.auth(user), "X-Min-Position": str(body["position"])}
    r = await kit.client.get(f"/v1/jobs/{body['job_id']}", headers=headers)
    assert r.status_code == 503, r.text  # not projected (in time)
    assert GENERATED.fullmatch(r.headers["request-id"])
    assert r.json()["request_id"] == r.headers["request-id"]


@pytest.mark.parametrize("header", ["Request-Id", "X-Request-Id"])
async def test_a_valid_client_id_is_echoed(kit: Kit, header: str) -> None:
    sent = "client-7:abc.DEF_01"
    r = await kit.client.get("/v1/nothing-here", headers={header: sent})
    assert r.headers["request-id"] == sent
    assert r.json()["request_id"] == sent
    longest = "a" * 128
    r = await kit.client.get("/v1/nothing-here", headers={header: longest})
    assert r.headers["request-id"] == longest


@pytest.mark.parametrize(
    "sent",
    ["", "a" * 129, "has space", "semi;colon", "new\\nline", "é", "<script>", "a/b"],
)
async def test_an_invalid_client_id_is_replaced(kit: Kit, sent: str) -> None:
    r = await kit.client.get("/v1/nothing-here", headers=[(b"Request-Id", sent.encode())])
    assert GENERATED.fullmatch(r.headers["request-id"]), r.headers["request-id"]
    assert r.json()["request_id"] == r.headers["request-id"]


async def test_request_id_wins_over_x_request_id(kit: Kit) -> None:
    r = await kit.client.get(
        "/v1/nothing-here", headers={"Request-Id": "first", "X-Request-Id": "second"}
    )
    assert r.headers["request-id"] == "first"


async def test_a_crash_and_its_log_line_carry_it(api_settings: Settings) -> None:
    app: FastAPI = create_app(api_settings)
    seen: dict[str, object] = {}

    @app.get("/boom")
    async def boom() -> None:
        seen.update(structlog.contextvars.get_contextvars())
        structlog.get_logger("test").info("about to fail")
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            r = await c.get("/boom", headers={"X-Request-Id": "trace-42"})
    assert r.status_code == 500
    assert r.headers["request-id"] == "trace-42"
    assert r.json()["request_id"] == "trace-42"
    assert r.json()["type"].endswith("/internal-error")
    assert seen["request_id"] == "trace-42"
    assert [e["event"] for e in logs].count("unhandled error") == 1
    events = {e["event"]: e for e in logs}
    assert events["about to fail"]["request_id"] == "trace-42"
    assert events["unhandled error"]["request_id"] == "trace-42"
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound afterwards

"""A body that is not sent as JSON is a 415; a JSON body that does not parse is a 400 that says
where it broke (issue 19)."""

from __future__ import annotations

import pytest

from api.app import create_app
from api.problems import is_json_media_type
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type

TINY = b'{"model": "tiny-sd", "prompt": "x", "steps": 4, "width": 64, "height": 64}'


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "json",
    ],
)
async def test_a_body_that_is_not_json_is_415(kit: Kit, user: str, content_type: str) -> None:
    r = await kit.client.post(
        "/v1/jobs", content=TINY, headers={**kit.auth(user), "Content-Type": content_type}
    )
    assert r.status_code == 415, r.text
    assert problem_type(r) == "unsupported-media-type"
    assert r.json()["type"] == "https://pinksea.dev/problems/unsupported-media-type"
    assert "application/json" in r.json()["detail"]


async def test_415_on_patch_too(kit: Kit, user: str) -> None:
    r = await kit.client.patch(
        "/v1/me",
        content=b"low_balance_emails=false",
        headers={**kit.auth(user), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415, r.text
    assert problem_type(r) == "unsupported-media-type"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_media_types_are_accepted(kit: Kit, user: str, content_type: str) -> None:
    r = await kit.client.post(
        "/v1/jobs", content=TINY, headers={**kit.auth(user), "Content-Type": content_type}
    )
    assert r.status_code == 202, r.text


async def test_no_body_needs_no_media_type(kit: Kit, user: str) -> None:
    job = (await kit.submit(user)).json()["job_id"]
    r = await kit.client.post(
        f"/v1/jobs/{job}/cancel", headers={**kit.auth(user), "Content-Type": "text/plain"}
    )
    assert r.status_code != 415, r.text
    r = await kit.client.post(
        "/v1/jobs", content=b"", headers={**kit.auth(user), "Content-Type": "text/plain"}
    )
    assert r.status_code == 422  # no body at all: the body is missing, not mistyped


async def test_malformed_json_is_400_with_where_it_broke(kit: Kit, user: str) -> None:
    r = await kit.client.post(
        "/v1/jobs",
        content=b'{"model": "tiny-sd",\n "prompt": oops}',
        headers={**kit.auth(user), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert problem_type(r) == "bad-request"
    body = r.json()
    assert "line 2, column 12 (character 32)" in body["detail"], body["detail"]
    assert body["errors"] == [
        {"loc": ["body", 32], "msg": "Expecting value", "type": "json_invalid"}
    ]
    assert body["request_id"] == r.headers["request-id"]


def test_the_document_declares_400_and_415_for_each_body(api_settings: Settings) -> None:
    schema = create_app(api_settings).openapi()
    with_body = [
        op
        for path in schema["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "requestBody" in op
    ]
    assert with_body
    for op in with_body:
        assert {"400", "415"} <= set(op["responses"]), op["operationId"]
        assert "application/problem+json" in op["responses"]["415"]["content"]


def test_is_json_media_type() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("application/problem+json; charset=utf-8")
    assert not is_json_media_type("text/json")
    assert not is_json_media_type("application/jsonp")

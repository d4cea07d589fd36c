"""Boards on the real stack: create (idempotent), list (cursor-paged), rename, file images
(moving them between boards), take them off, delete the board (its images stay), and another
user's board or image as a 404 problem."""

from __future__ import annotations

import pytest

from tests.api.conftest import Kit, problem_type
from tests.api.test_images import _job_with_images

pytestmark = pytest.mark.integration


async def _board(kit: Kit, user: str, name: str, key: str | None = None) -> str:
    headers = kit.auth(user) | ({"Idempotency-Key": key} if key else {})
    r = await kit.client.post("/v1/boards", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["board_id"])


async def test_create_is_idempotent_and_lists_page(kit: Kit, user: str) -> None:
    headers = kit.auth(user) | {"Idempotency-Key": "b-1"}
    first = await kit.client.post("/v1/boards", json={"name": "Seas"}, headers=headers)
    again = await kit.client.post("/v1/boards", json={"name": "Seas"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["board_id"] == first.json()["board_id"]
    other = await kit.client.post("/v1/boards", json={"name": "Skies"}, headers=headers)
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict"
    for bad in (
        {"name": ""},
        {"name": "   "},
        {"name": "a\x00b"},  # NUL: no PostgreSQL text holds it
        {"name": "x" * 301},
        {},
        {"name": "a", "x": 1},
    ):
        r = await kit.client.post("/v1/boards", json=bad, headers=kit.auth(user))
        assert r.status_code == 422, (bad, r.text)
    second = await _board(kit, user, "Skies")
    await kit.project()
    r = await kit.client.get("/v1/boards?limit=1", headers=kit.auth(user))
    assert r.status_code == 200
    page = r.json()
    assert [b["board_id"] for b in page["items"]] == [second]
    r = await kit.client.get(
        f"/v1/boards?limit=1&cursor={page['next_cursor']}", headers=kit.auth(user)
    )
    assert [b["name"] for b in r.json()["items"]] == ["Seas"]
    assert r.json()["next_cursor"] is None


async def test_images_move_between_boards_and_stay_when_a_board_goes(kit: Kit, user: str) -> None:
    _, images = await _job_with_images(kit, user, count=2)
    image, other_image = images[0]["name"], images[1]["name"]
    seas, skies = await _board(kit, user, "Seas"), await _board(kit, user, "Skies")
    auth = kit.auth(user)
    for board, name in ((seas, image), (seas, other_image), (skies, image), (skies, image)):
        r = await kit.client.put(f"/v1/boards/{board}/images/{name}", headers=auth)
        assert r.status_code == 204, r.text
        assert int(r.headers["X-Position"]) > 0
    await kit.project()
    counts = {
        b["board_id"]: b["image_count"]
        for b in (await kit.client.get("/v1/boards", headers=auth)).json()["items"]
    }
    assert counts == {seas: 1, skies: 1}  # the image moved: on one board only
    r = await kit.client.patch(f"/v1/boards/{seas}", json={"name": "Oceans"}, headers=auth)
    assert r.status_code == 200 and r.json()["name"] == "Oceans", r.text
    r = await kit.client.delete(f"/v1/boards/{seas}/images/{image}", headers=auth)
    assert r.status_code == 404 and problem_type(r) == "not-found"  # it is on skies
    r = await kit.client.delete(f"/v1/boards/{seas}/images/{other_image}", headers=auth)
    assert r.status_code == 204, r.text
    r = await kit.client.delete(f"/v1/boards/{skies}", headers=auth)
    assert r.status_code == 204, r.text
    again = await kit.client.delete(f"/v1/boards/{skies}", headers=auth)
    assert again.status_code == 404 and problem_type(again) == "not-found"
    await kit.project()
    r = await kit.client.get(f"/v1/boards/{seas}", headers=auth)
    assert r.status_code == 200 and r.json()["name"] == "Oceans"
    assert r.json()["image_count"] == 0
    r = await kit.client.get(f"/v1/boards/{skies}", headers=auth)
    assert r.status_code == 404
    r = await kit.client.get(f"/v1/images/{image}", headers=auth)
    assert r.status_code == 200  # the board went; its image stayed
    r = await kit.client.put(f"/v1/boards/{seas}/images/{image}", headers=auth)
    assert r.status_code == 204, r.text


async def test_another_users_board_and_image_are_404(kit: Kit, user: str, other: str) -> None:
    _, images = await _job_with_images(kit, user, count=1)
    image = images[0]["name"]
    board = await _board(kit, user, "Mine")
    own = await _board(kit, other, "Theirs")
    await kit.project()
    attempts = [
        ("get", f"/v1/boards/{board}", None),
        ("patch", f"/v1/boards/{board}", {"name": "stolen"}),
        ("delete", f"/v1/boards/{board}", None),
        ("put", f"/v1/boards/{board}/images/{image}", None),
        ("put", f"/v1/boards/{own}/images/{image}", None),  # B's board, A's image
        ("put", f"/v1/boards/{own}/images/no-such-image", None),
        ("delete", f"/v1/boards/{board}/images/{image}", None),
    ]
    for method, path, body in attempts:
        r = await kit.client.request(method, path, json=body, headers=kit.auth(other))
        assert r.status_code == 404 and problem_type(r) == "not-found", (method, path, r.text)
    r = await kit.client.get(f"/v1/boards/{board}", headers=kit.auth(user))
    assert r.json()["name"] == "Mine"


async def test_images_filter_by_board_and_creation_time_and_page(kit: Kit, user: str) -> None:
    _, images = await _job_with_images(kit, user, count=3)
    names = [i["name"] for i in images]
    board = await _board(kit, user, "Filtered")
    auth = kit.auth(user)
    for name in names[:2]:
        r = await kit.client.put(f"/v1/boards/{board}/images/{name}", headers=auth)
        assert r.status_code == 204, r.text
    await kit.project()
    r = await kit.client.get(f"/v1/images?board_id={board}&limit=1", headers=auth)
    assert r.status_code == 200, r.text
    first = r.json()
    r = await kit.client.get(
        f"/v1/images?board_id={board}&limit=1&cursor={first['next_cursor']}", headers=auth
    )
    second = r.json()
    assert {first["items"][0]["name"], second["items"][0]["name"]} == set(names[:2])
    assert second["next_cursor"] is None
    r = await kit.client.get("/v1/images?created_before=2000-01-01T00:00:00Z", headers=auth)
    assert r.status_code == 200 and r.json()["items"] == []
    r = await kit.client.get("/v1/images?created_after=2000-01-01T00:00:00Z", headers=auth)
    assert {i["name"] for i in r.json()["items"]} >= set(names)
    r = await kit.client.get("/v1/images?created_after=yesterday", headers=auth)
    assert r.status_code == 422

"""Boards on the real stack: create (idempotent), list (cursor-paged), rename, file images
(moving them between boards), take them off, delete the board (its images stay), another
user's board or image as a 404 problem, and the names sealed under the user's data key (read
"[erased]" after their erasure)."""

from __future__ import annotations

from uuid import UUID

import pytest

from api.services import now
from domain.personal_data import ERASED, is_sealed
from tests.api.conftest import Kit, problem_type, stored_texts
from tests.api.project_now import project_now
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


NAME = "Letters to Ana Pereira, 2019"  # what a person writes: personal data


async def _names(kit: Kit, user: str) -> dict[str, str]:
    r = await kit.client.get("/v1/boards", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return {b["board_id"]: b["name"] for b in r.json()["items"]}


async def test_a_board_name_is_sealed_in_the_store_and_reads_in_the_api(
    kit: Kit, user: str
) -> None:
    headers = kit.auth(user) | {"Idempotency-Key": "sealed-1"}
    r = await kit.client.post("/v1/boards", json={"name": "first draft"}, headers=headers)
    assert r.status_code == 201 and r.json()["name"] == "first draft", r.text
    board = r.json()["board_id"]
    r = await kit.client.patch(f"/v1/boards/{board}", json={"name": NAME}, headers=headers)
    assert r.status_code == 200 and r.json()["name"] == NAME, r.text
    texts = await stored_texts(kit, board)
    assert len(texts) == 4  # two events, each stored and published
    assert not any(NAME in t or "first draft" in t for t in texts)
    stored = kit.app.board(user, UUID(board))
    assert is_sealed(stored.name) and is_sealed(stored.created_name)
    await kit.project()
    row = await kit.services.pool.fetchval("SELECT name FROM boards WHERE board_id = $1", board)
    assert is_sealed(row)
    assert (await _names(kit, user))[board] == NAME
    r = await kit.client.get(f"/v1/boards/{board}", headers=kit.auth(user))
    assert r.json()["name"] == NAME

    # The same create again is recognised by the name's keyed digest (also after a rename);
    # the key with another name is a conflict; a rename to the name it has records nothing.
    again = await kit.client.post("/v1/boards", json={"name": "first draft"}, headers=headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["board_id"] == board and again.json()["name"] == NAME
    other = await kit.client.post("/v1/boards", json={"name": NAME}, headers=headers)
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict"
    version = kit.app.board(user, UUID(board)).version
    r = await kit.client.patch(f"/v1/boards/{board}", json={"name": f" {NAME} "}, headers=headers)
    assert r.status_code == 200 and r.json()["name"] == NAME, r.text
    assert kit.app.board(user, UUID(board)).version == version


async def test_after_erasure_board_names_read_erased_everywhere(
    kit: Kit, user: str, other: str
) -> None:
    headers = kit.auth(user) | {"Idempotency-Key": "erased-1"}
    r = await kit.client.post("/v1/boards", json={"name": NAME}, headers=headers)
    assert r.status_code == 201, r.text
    board = r.json()["board_id"]
    theirs = await _board(kit, other, "their own words")
    await kit.project()
    r = await kit.client.delete("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["key_destroyed"], r.text
    await kit.project()
    assert (await _names(kit, user)) == {board: ERASED}
    r = await kit.client.get(f"/v1/boards/{board}", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["name"] == ERASED
    assert (await _names(kit, other))[theirs] == "their own words"

    # A new board starts a new key: it reads, the old one still reads erased (its seal names
    # the destroyed generation), and the old create's key can no longer be matched.
    fresh = await _board(kit, user, "after the erasure")
    again = await kit.client.post("/v1/boards", json={"name": NAME}, headers=headers)
    assert again.status_code == 409 and problem_type(again) == "idempotency-conflict"
    await kit.project()
    assert (await _names(kit, user)) == {board: ERASED, fresh: "after the erasure"}

    # The read model rebuilt from the event store still reads erased.
    async with kit.services.pool.acquire() as conn, conn.transaction():
        await conn.execute("TRUNCATE board_images, boards")
        await conn.execute("DELETE FROM projection_versions WHERE projection = 'boards'")
    await project_now(kit.app, kit.settings.database_url, start=1)
    assert (await _names(kit, user)) == {board: ERASED, fresh: "after the erasure"}
    r = await kit.client.patch(f"/v1/boards/{board}", json={"name": "renamed"}, headers=headers)
    assert r.status_code == 200 and r.json()["name"] == "renamed", r.text


async def test_a_board_from_before_sealing_reads_as_it_was_stored(kit: Kit, user: str) -> None:
    """A board recorded before sealing holds its name in plaintext: it reads and compares as
    before (and erasure cannot reach it: README, "Personal data and erasure")."""
    await kit.client.get("/v1/me", headers=kit.auth(user))
    old = kit.app.create_board(user, request_key="old", name="an old name", at=now())
    headers = kit.auth(user) | {"Idempotency-Key": "old"}
    again = await kit.client.post("/v1/boards", json={"name": "an old name"}, headers=headers)
    assert again.status_code == 201 and again.json()["board_id"] == str(old.board_id)
    await kit.project()
    assert (await _names(kit, user))[str(old.board_id)] == "an old name"

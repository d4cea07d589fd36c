"""Boards on the in-memory event store: idempotent creation, tenant isolation, the bound, and
the invariant that an image is on at most one board under any sequence of commands."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import boards
from domain.application import PinkseaApplication
from domain.boards import Board
from domain.errors import IdempotencyConflict, InvalidTransition, NotFound
from domain.jobs import ImageRecord, JobParameters
from domain.personal_data import is_sealed
from infra.personal_keys import DataKey

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _app() -> PinkseaApplication:
    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture
def app() -> PinkseaApplication:
    return _app()


def _user(app: PinkseaApplication) -> str:
    user = f"user-{uuid4()}"
    app.register_user(user, T0)
    return user


def _images(app: PinkseaApplication, user: str, count: int = 2, key: str = "j") -> list[str]:
    params = JobParameters(
        model="tiny-sd", prompt="a sea", steps=4, width=64, height=64, batch_size=count
    )
    job_id = app.submit_job(user, idempotency_key=key, params=params, at=T0).job_id
    assert job_id is not None
    names = [f"{job_id}-{i}" for i in range(count)]
    images: list[ImageRecord] = [
        {
            "name": name,
            "key": f"users/{user}/images/{name}.png",
            "thumbnail_key": f"users/{user}/thumbnails/{name}.webp",
            "size_bytes": 10,
            "width": 64,
            "height": 64,
        }
        for name in names
    ]
    app.record_dispatch(job_id, attempt=1, worker_id="w", at=T0)
    app.record_start(job_id, attempt=1, worker_id="w", gpu="cpu", at=T0)
    app.complete_job(job_id, attempt=1, gpu_ms=5, cuda_ms=None, images=images, at=T0)
    return names


def _board(app: PinkseaApplication, user: str, key: str) -> UUID:
    return app.create_board(user, request_key=key, name=f"board {key}", at=T0).board_id


def _boards_holding(app: PinkseaApplication, user: str, keys: list[str], name: str) -> int:
    return sum(
        1
        for key in keys
        if isinstance(b := app.find(_board_id(user, key)), Board) and b.holds(name)
    )


def _board_id(user: str, key: str) -> UUID:
    return Board.create_id(user, key)


def test_create_is_idempotent_per_key(app: PinkseaApplication) -> None:
    ann = _user(app)
    first = app.create_board(ann, request_key="k", name="Seas", at=T0)
    again = app.create_board(ann, request_key="k", name="Seas", at=T0)
    assert first.changed and not again.changed and again.board_id == first.board_id
    assert again.position == first.position
    with pytest.raises(IdempotencyConflict):
        app.create_board(ann, request_key="k", name="Skies", at=T0)
    with pytest.raises(InvalidTransition):
        app.create_board(ann, request_key="blank", name="  ", at=T0)
    app.delete_board(ann, first.board_id, at=T0)
    with pytest.raises(IdempotencyConflict):
        app.create_board(ann, request_key="k", name="Seas", at=T0)


def test_a_sealed_name_is_recorded_with_its_digest_and_repeats_are_recognised(
    app: PinkseaApplication,
) -> None:
    ann = _user(app)
    key, new_key = DataKey(ann, b"k" * 32), DataKey(ann, b"n" * 32)
    first = app.create_board(ann, request_key="k", name=" Seas ", at=T0, sealer=key)
    board = app.board(ann, first.board_id)
    assert is_sealed(board.name) and "Seas" not in board.name
    assert key.open(boards.BOARD_NAME_FIELD, board.name) == "Seas"
    again = app.create_board(ann, request_key="k", name="Seas", at=T0, sealer=key)
    assert not again.changed and again.board_id == first.board_id
    for other_name, sealer in (("Skies", key), ("Seas", new_key), ("Seas", None)):
        with pytest.raises(IdempotencyConflict):  # without the key that made it: not the same
            app.create_board(ann, request_key="k", name=other_name, at=T0, sealer=sealer)
    assert not app.rename_board(ann, first.board_id, name="Seas", at=T0, sealer=key).changed
    assert app.rename_board(ann, first.board_id, name="Skies", at=T0, sealer=key).changed
    renamed = app.board(ann, first.board_id)
    assert key.open(boards.BOARD_NAME_FIELD, renamed.name) == "Skies"
    assert app.create_board(ann, request_key="k", name="Seas", at=T0, sealer=key).board_id == (
        first.board_id  # a repeated create is compared with the name it created
    )


def test_a_plaintext_name_from_before_sealing_compares_as_it_was_stored(
    app: PinkseaApplication,
) -> None:
    ann = _user(app)
    key = DataKey(ann, b"k" * 32)
    old = app.create_board(ann, request_key="old", name="Seas", at=T0)  # no sealer
    assert app.board(ann, old.board_id).name == "Seas"
    assert not app.create_board(ann, request_key="old", name="Seas", at=T0, sealer=key).changed
    assert not app.rename_board(ann, old.board_id, name="Seas", at=T0, sealer=key).changed
    assert app.rename_board(ann, old.board_id, name="Skies", at=T0, sealer=key).changed
    assert is_sealed(app.board(ann, old.board_id).name)  # renamed now: sealed from then on


def test_another_users_board_or_image_is_not_found(app: PinkseaApplication) -> None:
    ann, bob = _user(app), _user(app)
    board = _board(app, ann, "a")
    (image,) = _images(app, ann, 1)
    with pytest.raises(NotFound):
        app.rename_board(bob, board, name="mine", at=T0)
    with pytest.raises(NotFound):
        app.add_board_image(bob, _board(app, bob, "b"), image_name=image, at=T0)
    with pytest.raises(NotFound):
        app.add_board_image(ann, board, image_name="not-an-image", at=T0)
    with pytest.raises(NotFound):
        app.delete_board(bob, board, at=T0)


def test_adding_moves_the_image_and_deleting_a_board_leaves_its_images(
    app: PinkseaApplication,
) -> None:
    ann = _user(app)
    first, second = _board(app, ann, "1"), _board(app, ann, "2")
    image, other = _images(app, ann)
    assert app.add_board_image(ann, first, image_name=image, at=T0).changed
    assert not app.add_board_image(ann, first, image_name=image, at=T0).changed
    app.add_board_image(ann, second, image_name=image, at=T0)
    assert app.board(ann, second).images == [image] and app.board(ann, first).images == []
    app.add_board_image(ann, second, image_name=other, at=T0)
    app.delete_board(ann, second, at=T0)
    with pytest.raises(NotFound):
        app.board(ann, second)
    app.add_board_image(ann, first, image_name=image, at=T0)  # uncategorised, filed again
    assert app.board(ann, first).images == [image]


def test_a_deleted_image_leaves_its_board_and_cannot_be_added(app: PinkseaApplication) -> None:
    ann = _user(app)
    board = _board(app, ann, "1")
    image, _ = _images(app, ann)
    app.add_board_image(ann, board, image_name=image, at=T0)
    app.delete_image(UUID(image[:36]), user_id=ann, name=image, at=T0)
    assert app.board(ann, board).images == []
    with pytest.raises(NotFound):
        app.add_board_image(ann, board, image_name=image, at=T0)
    with pytest.raises(NotFound):
        app.remove_board_image(ann, board, image_name=image, at=T0)


def test_a_board_holds_at_most_its_bound(
    app: PinkseaApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boards, "BOARD_IMAGES_MAX", 2)
    ann = _user(app)
    board = _board(app, ann, "1")
    names = _images(app, ann, 3)
    for name in names[:2]:
        app.add_board_image(ann, board, image_name=name, at=T0)
    with pytest.raises(InvalidTransition):
        app.add_board_image(ann, board, image_name=names[2], at=T0)
    assert app.board(ann, board).images == names[:2]


_KEYS = ["a", "b", "c"]
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "delete", "delete_image"]),
        st.sampled_from(_KEYS),
        st.integers(0, 2),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS)
def test_an_image_is_on_at_most_one_board(ops: list[tuple[str, str, int]]) -> None:
    app = _app()
    ann = _user(app)
    names = _images(app, ann, 3)
    for key in _KEYS:
        _board(app, ann, key)
    for op, key, index in ops:
        board, name = _board_id(ann, key), names[index]
        try:
            if op == "add":
                app.add_board_image(ann, board, image_name=name, at=T0)
            elif op == "remove":
                app.remove_board_image(ann, board, image_name=name, at=T0)
            elif op == "delete":
                app.delete_board(ann, board, at=T0)
            else:
                app.delete_image(UUID(name[:36]), user_id=ann, name=name, at=T0)
        except NotFound:
            pass  # a deleted board or image, or an image not on that board
        for each in names:
            assert _boards_holding(app, ann, _KEYS, each) <= 1

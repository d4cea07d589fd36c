"""The verified object (domain/verified_objects.py) that uploads and users' models are: their
stored events keep the topics they were written with, every verdict replays from the store to
the same state, and a model's name is sealed under the user's data key (open for the same
request's replay, erased with the key, plaintext when recorded before sealing)."""

from __future__ import annotations

import os

import pytest
from eventsourcing.utils import resolve_topic

from domain.application import PinkseaApplication
from domain.catalog import ModelFamily
from domain.errors import IdempotencyConflict, NotFound
from domain.personal_data import ERASED, is_sealed
from domain.uploads import ImageFacts, Upload
from domain.user_models import NAME_FIELD, LoraFacts, UserModel
from infra.personal_keys import KEY_BYTES, DataKey, ErasedKey
from tests.domain.test_user_models import T0, _user  # a user on a plan with LoRAs

LORA = LoraFacts(
    size_bytes=4096,
    sha256="ab" * 32,
    tensor_names=("unet.down_blocks.0.attn1.to_q.lora.down.weight",),
)
PNG = ImageFacts(size_bytes=100, format="PNG", width=64, height=64)


@pytest.fixture
def app() -> PinkseaApplication:
    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.mark.parametrize(
    ("event", "topic"),
    [
        (Upload.Requested, "pinksea:Upload.Requested"),
        (Upload.Completed, "pinksea:Upload.Completed"),
        (Upload.Rejected, "pinksea:Upload.Rejected"),
        (Upload.Deleted, "pinksea:Upload.Deleted"),
        (UserModel.Requested, "pinksea:UserModel.Requested"),
        (UserModel.Verified, "pinksea:UserModel.Verified"),
        (UserModel.Rejected, "pinksea:UserModel.Rejected"),
        (UserModel.Deleted, "pinksea:UserModel.Deleted"),
    ],
)
def test_stored_events_keep_their_topics(event: type, topic: str) -> None:
    """Events in the store were written under these topics: each still decodes as its class."""
    assert resolve_topic(topic) is event


def test_each_verdict_replays_from_the_store(app: PinkseaApplication) -> None:
    user = _user(app)
    rejected = app.request_upload(user, request_key="a", content_type="image/png", at=T0)
    app.complete_upload(user, rejected.upload_id, facts=ImageFacts(100, "GIF", 64, 64), at=T0)
    upload: Upload = app.repository.get(rejected.upload_id)  # replayed from its events
    assert (upload.status, upload.rejection) == ("rejected", "the file is GIF, not image/png")
    assert not upload.usable
    completed = app.request_upload(user, request_key="b", content_type="image/png", at=T0)
    app.complete_upload(user, completed.upload_id, facts=PNG, at=T0)
    assert app.repository.get(completed.upload_id).usable
    verified = app.request_user_model(
        user, request_key="c", name="n", family=ModelFamily.SD15, at=T0
    )
    app.complete_user_model(user, verified.model_id, facts=LORA, at=T0)
    model: UserModel = app.repository.get(verified.model_id)
    assert (model.status, model.sha256, model.tensors, model.usable) == (
        "verified", LORA.sha256, 1, True,
    )  # fmt: skip
    for kind, object_id in ((Upload, completed.upload_id), (UserModel, verified.model_id)):
        assert app.owned(kind, user, object_id).id == object_id
        with pytest.raises(NotFound):
            app.owned(UserModel if kind is Upload else Upload, user, object_id)  # another kind
    app.delete_user_model(user, verified.model_id, at=T0)
    assert app.repository.get(verified.model_id).deleted
    with pytest.raises(NotFound):
        app.user_model(user, verified.model_id)


def test_a_models_name_is_sealed_under_the_users_key(app: PinkseaApplication) -> None:
    user = _user(app)
    key = DataKey(user, os.urandom(KEY_BYTES))
    first = app.request_user_model(
        user, request_key="k", name="pink sea", family=ModelFamily.SD15, at=T0, data_key=key
    )
    stored = app.recorder.select_events(first.model_id)
    assert stored and not any(b"pink sea" in event.state for event in stored)
    sealed = app.user_model(user, first.model_id).name
    assert is_sealed(sealed) and key.open(NAME_FIELD, sealed) == "pink sea"
    assert ErasedKey(user).open(NAME_FIELD, sealed) == ERASED  # once the key is destroyed
    again = app.request_user_model(
        user, request_key="k", name="pink sea", family=ModelFamily.SD15, at=T0, data_key=key
    )  # the recorded name is opened to compare
    assert again.model_id == first.model_id and not again.changed
    with pytest.raises(IdempotencyConflict):
        app.request_user_model(
            user, request_key="k", name="other", family=ModelFamily.SD15, at=T0, data_key=key
        )


def test_a_name_recorded_before_sealing_is_read_as_it_is(app: PinkseaApplication) -> None:
    user = _user(app)
    first = app.request_user_model(
        user, request_key="k", name="plain", family=ModelFamily.SD15, at=T0
    )
    assert app.user_model(user, first.model_id).name == "plain"
    key = DataKey(user, os.urandom(KEY_BYTES))
    again = app.request_user_model(
        user, request_key="k", name="plain", family=ModelFamily.SD15, at=T0, data_key=key
    )
    assert again.model_id == first.model_id and not again.changed
    with pytest.raises(IdempotencyConflict):
        app.request_user_model(
            user, request_key="k", name="other", family=ModelFamily.SD15, at=T0, data_key=key
        )

"""Sealed personal data (domain/personal_data.py) under a user's data key (infra/personal_keys.py):
what is sealed opens to itself with that key only, and to "[erased]" once the key is gone."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from domain.jobs import JobParameters
from domain.personal_data import (
    ERASED,
    WITHHELD,
    blinded,
    is_sealed,
    is_sealed_parameters,
    opened,
    sealed,
    withheld,
)
from infra.personal_keys import (
    SEALED_V1,
    SEALED_V2,
    DataKey,
    ErasedKey,
    SealedValueCorrupt,
    parse_kek,
    sealed_generation,
)
from infra.settings import Settings

texts = st.text(min_size=1, max_size=2000)


def key(user: str = "u-1") -> DataKey:
    return DataKey(user, os.urandom(32))


@given(texts)
def test_a_sealed_text_opens_to_itself(text: str) -> None:
    k = key()
    value = k.seal("prompt", text)
    assert is_sealed(value)
    assert k.open("prompt", value) == text
    assert k.seal("prompt", text) != value  # a fresh nonce each time
    assert ErasedKey("u-1").open("prompt", value) == ERASED


@given(texts)
def test_a_sealed_text_opens_only_with_its_users_key_and_field(text: str) -> None:
    k = key("u-1")
    value = k.seal("prompt", text)
    for wrong, field in (
        (key("u-1"), "prompt"),
        (DataKey("u-2", k.key), "prompt"),
        (k, "negative_prompt"),
    ):
        with pytest.raises(SealedValueCorrupt):
            wrong.open(field, value)
    generation, body = sealed_generation(value)
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1  # one bit of the tag
    tampered = f"{SEALED_V2}{generation}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(SealedValueCorrupt):
        k.open("prompt", tampered)


@given(texts, st.integers(1, 5))
def test_a_value_of_a_destroyed_generation_reads_erased_under_the_next_key(
    text: str, generation: int
) -> None:
    old = DataKey("u-1", os.urandom(32), generation)
    value = old.seal("prompt", text)
    assert sealed_generation(value)[0] == generation
    assert old.open("prompt", value) == text
    new = DataKey("u-1", os.urandom(32), generation + 1)  # made after the erasure
    assert new.open("prompt", value) == ERASED
    # A generation the user has not had yet is no erasure but corrupt, as is a relabelled
    # value under that generation's key (the generation is bound to the ciphertext).
    relabelled = value.replace(f"{SEALED_V2}{generation}:", f"{SEALED_V2}{generation + 1}:")
    for live in (old, DataKey("u-1", old.key, generation + 1)):
        with pytest.raises(SealedValueCorrupt):
            live.open("prompt", relabelled)


def test_a_first_keys_value_sealed_before_generations_opens_and_is_erased_after() -> None:
    k = DataKey("u-1", os.urandom(32))
    # What DataKey.seal wrote before generations: v1, the associated data without one.
    v1 = SEALED_V1 + sealed_generation(k.seal("prompt", "a lighthouse"))[1]
    assert k.open("prompt", v1) == "a lighthouse"
    assert DataKey("u-1", os.urandom(32), 2).open("prompt", v1) == ERASED


def test_a_prompt_that_looks_sealed_is_sealed_like_any_other() -> None:
    k = key()
    looks = f"{SEALED_V1}not-base64!"
    params = JobParameters(model="tiny-sd", prompt=looks, steps=4, width=64, height=64)
    stored = sealed(params.as_event_data(), k)
    assert stored["prompt"] != looks and opened(stored, k)["prompt"] == looks
    assert params.fingerprint(k) == params.fingerprint(k)


@given(st.text(max_size=300), st.text(max_size=300))
def test_parameters_round_trip_and_fingerprints_are_keyed(prompt: str, negative: str) -> None:
    params = JobParameters(
        model="tiny-sd",
        prompt=prompt.replace("\x00", "") or "p",
        negative_prompt=negative.replace("\x00", ""),
        steps=4,
        width=64,
        height=64,
    )
    data = params.as_event_data()
    k = key()
    stored = sealed(data, k)
    assert is_sealed_parameters(stored) and stored["steps"] == 4
    assert opened(stored, k) == data
    assert opened(stored, ErasedKey("u-1"))["prompt"] == ERASED
    assert JobParameters.model_validate(withheld(stored)).prompt == WITHHELD
    assert opened(data, k) == data  # plaintext (before sealing) reads as it is
    # The same request under the same key: the same fingerprint; under another key, another.
    assert params.fingerprint(k) == params.fingerprint(k) != params.fingerprint(key())
    digests = blinded(data, k)
    assert digests == blinded(data, k) and digests["prompt"].startswith("hmac:")
    assert {n: digests[n] for n in ("steps", "model")} == {"steps": 4, "model": "tiny-sd"}


def test_the_key_encryption_key_setting_is_32_bytes_of_base64() -> None:
    assert len(parse_kek("cGlua3NlYS1sb2NhbC1kZXYta2VrLW5vdC1zZWNyZXQ=")) == 32
    for bad in ("", "not base64!", "c2hvcnQ="):
        with pytest.raises(ValueError):
            parse_kek(bad)


def test_a_deployment_refuses_the_local_key_encryption_key() -> None:
    local = Settings(_env_file=None)
    deployed = local.model_copy(update={"environment": "production"})
    assert "PINKSEA_PERSONAL_DATA_KEK is still the local default" in deployed.deployment_problems()
    own = deployed.model_copy(
        update={"personal_data_kek": SecretStr(base64.b64encode(os.urandom(32)).decode())}
    )
    assert not [p for p in own.deployment_problems() if "PERSONAL_DATA" in p]
    with pytest.raises(ValidationError, match="32 random bytes"):
        Settings(_env_file=None, personal_data_kek=SecretStr("c2hvcnQ="))

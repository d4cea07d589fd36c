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
    SEALED_PREFIX,
    WITHHELD,
    blinded,
    is_sealed,
    is_sealed_parameters,
    opened,
    sealed,
    withheld,
)
from infra.personal_keys import DataKey, ErasedKey, SealedValueCorrupt, parse_kek
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
    raw = bytearray(base64.urlsafe_b64decode(value.removeprefix(SEALED_PREFIX)))
    raw[-1] ^= 1  # one bit of the tag
    tampered = SEALED_PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(SealedValueCorrupt):
        k.open("prompt", tampered)


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

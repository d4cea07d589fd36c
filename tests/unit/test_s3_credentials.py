"""Which credentials the S3 client signs with: the configured key (the local stack), or, when
the key id is empty as production's task definitions set it, the default chain (the task
role's). A presigned URL names the access key it was signed with, without any request."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from infra.s3 import s3_client
from infra.settings import Settings


@pytest.fixture(autouse=True)
def fresh_default_session(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3's default session resolves credentials once and keeps them: a client an earlier
    # test made would decide which key these tests see.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def _signed_with(settings: Settings) -> str:
    url = s3_client(settings).generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "k"}, ExpiresIn=60
    )
    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[0]


def test_empty_key_id_signs_with_the_role_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the ECS agent provides a task, as boto3's chain finds it.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATASKROLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "role-secret")
    settings = Settings(_env_file=None, s3_endpoint_url="", s3_access_key_id="")
    assert _signed_with(settings) == "ASIATASKROLE"


def test_a_configured_key_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATASKROLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "role-secret")
    settings = Settings(_env_file=None, s3_access_key_id="pinksea")
    assert _signed_with(settings) == "pinksea"

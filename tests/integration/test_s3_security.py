"""The local S3 refuses what real S3 refuses (issue 17): the image URLs the API hands out are
presigned GETs of one key, so a URL edited to name another user's image, a PUT or DELETE through
a GET URL, an unsigned request and a wrong secret are all 403, and none of them reads or changes
an object. moto's server accepted every one of these; SeaweedFS (infra/local/s3.sh) checks the
SigV4 signature like S3. Each test first shows the honest request succeeding, so a server that
refused everything would fail them too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from api.image_urls import S3PresignedUrls, expiry
from api.services import s3_client as api_s3_client
from gpu_consumer.outputs import image_key
from infra.settings import Settings

pytestmark = pytest.mark.integration


def _put_image(s3: Any, bucket: str, user_id: str) -> tuple[str, bytes]:
    key = image_key(user_id, f"{uuid.uuid4()}-0")
    body = f"PNG of {user_id} {uuid.uuid4()}".encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png")
    return key, body


@pytest.fixture
def signer(stack_settings: Settings, s3_bucket: str) -> S3PresignedUrls:
    """What the API signs image URLs with when no CDN is configured."""
    return S3PresignedUrls(api_s3_client(stack_settings), s3_bucket)


def _url(signer: S3PresignedUrls, key: str) -> str:
    return signer.sign(key, expiry(datetime.now(UTC)))


def test_a_url_edited_to_another_users_image_is_refused(
    s3_client: Any, s3_bucket: str, signer: S3PresignedUrls
) -> None:
    alice_key, alice_png = _put_image(s3_client, s3_bucket, "alice")
    bob_key, bob_png = _put_image(s3_client, s3_bucket, "bob")
    url = _url(signer, alice_key)
    honest = httpx.get(url, timeout=10)
    assert (honest.status_code, honest.content) == (200, alice_png)

    assert alice_key in url
    edited = httpx.get(url.replace(alice_key, bob_key), timeout=10)
    assert edited.status_code == 403, edited.text
    assert bob_png not in edited.content
    assert "SignatureDoesNotMatch" in edited.text


def test_the_bucket_and_its_objects_are_refused_unsigned(
    stack_settings: Settings, s3_client: Any, s3_bucket: str
) -> None:
    key, _ = _put_image(s3_client, s3_bucket, "alice")
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)  # signed: the owner may list
    assert key in [o["Key"] for o in listed["Contents"]]

    endpoint = str(stack_settings.s3_endpoint_url).rstrip("/")
    for url in (f"{endpoint}/{s3_bucket}?list-type=2", f"{endpoint}/{s3_bucket}", endpoint):
        answer = httpx.get(url, timeout=10)
        assert answer.status_code == 403, (url, answer.text)
        assert key not in answer.text
    assert httpx.get(f"{endpoint}/{s3_bucket}/{key}", timeout=10).status_code == 403


def test_a_wrong_secret_is_refused(stack_settings: Settings, s3_bucket: str) -> None:
    forger = boto3.client(
        "s3",
        endpoint_url=stack_settings.s3_endpoint_url,
        region_name=stack_settings.s3_region,
        aws_access_key_id=stack_settings.s3_access_key_id,
        aws_secret_access_key="not-the-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as refused:
        forger.list_objects_v2(Bucket=s3_bucket)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_get_url_neither_uploads_nor_deletes(
    s3_client: Any, s3_bucket: str, signer: S3PresignedUrls
) -> None:
    key, png = _put_image(s3_client, s3_bucket, "alice")
    url = _url(signer, key)
    assert httpx.get(url, timeout=10).status_code == 200

    put = httpx.put(url, content=b"defaced", timeout=10)
    assert put.status_code == 403, put.text
    deleted = httpx.delete(url, timeout=10)
    assert deleted.status_code == 403, deleted.text
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == png
    # A new key through it is refused too: nothing was written beside the image.
    other = key.replace(".png", "-extra.png")
    assert httpx.put(url.replace(key, other), content=b"x", timeout=10).status_code == 403
    assert s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=other).get("KeyCount", 0) == 0

"""A test session's bucket in the local S3 goes with the session (tests/conftest.py's
``s3_bucket``, tests/api/conftest.py's ``api_settings``): SeaweedFS gives each bucket volumes
of its own, and after a few hundred buckets left behind every upload failed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from infra.settings import Settings
from tests import conftest as session

pytestmark = pytest.mark.integration


def _bucket_with_objects(s3: Any, settings: Settings, prefix: str) -> str:
    bucket = f"{prefix}{uuid.uuid4().hex[:10]}"
    s3.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.s3_region}
    )
    for key in ("a.png", "users/u/images/b.png", "users/u/thumbnails/b.webp"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"bytes")
    return bucket


def _buckets(s3: Any) -> set[str]:
    return {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_a_bucket_is_emptied_and_deleted(s3_client: Any, stack_settings: Settings) -> None:
    bucket = _bucket_with_objects(s3_client, stack_settings, "pinksea-t-gone-")
    assert bucket in _buckets(s3_client)
    session.delete_bucket(s3_client, bucket)
    assert bucket not in _buckets(s3_client)


def test_only_stale_buckets_are_swept(
    s3_client: Any, stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live session's bucket stays; one older than the stale age goes (here the age made
    negative, so that a bucket made now is older than it)."""
    prefix = f"pinksea-t-sweep{uuid.uuid4().hex[:6]}-"
    bucket = _bucket_with_objects(s3_client, stack_settings, prefix)
    try:
        session.sweep_stale_buckets(s3_client, prefix)
        assert bucket in _buckets(s3_client)
        monkeypatch.setattr(session, "STALE_DATABASE_S", -3600)
        session.sweep_stale_buckets(s3_client, prefix)
        assert bucket not in _buckets(s3_client)
    finally:
        if bucket in _buckets(s3_client):
            session.delete_bucket(s3_client, bucket)

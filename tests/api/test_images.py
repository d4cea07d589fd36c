"""Images: listing, URLs (S3 presigned ones that S3 honours; CloudFront signed ones, verified
with the public key, when a CDN is configured), deletion that frees quota and objects."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from fnmatch import fnmatch
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from uuid import UUID

import httpx
import pytest
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

from api.app import create_app
from gpu_consumer.outputs import image_key, thumbnail_key
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


async def _job_with_images(kit: Kit, user: str, count: int = 2) -> tuple[str, list[dict[str, Any]]]:
    """A completed job whose images exist in S3, as a worker would have uploaded them."""
    job_id = (await kit.submit(user, batch_size=count)).json()["job_id"]
    s3 = kit.services.s3
    images = []
    for i in range(count):
        name = f"{job_id}-{i}"
        key, thumb = image_key(user, name), thumbnail_key(user, name)  # the worker's layout
        png = b"\x89PNG fake " + name.encode()
        s3.put_object(Bucket=kit.settings.s3_bucket, Key=key, Body=png)
        s3.put_object(Bucket=kit.settings.s3_bucket, Key=thumb, Body=b"RIFF webp")
        images.append(
            {
                "name": name,
                "key": key,
                "thumbnail_key": thumb,
                "size_bytes": len(png),
                "width": 64,
                "height": 64,
            }
        )
    kit.run_job(job_id, images=images)  # type: ignore[arg-type]
    await kit.project()
    return job_id, images


async def test_list_get_and_presigned_urls(kit: Kit, user: str) -> None:
    job_id, images = await _job_with_images(kit, user)
    r = await kit.client.get("/v1/images?limit=1", headers=kit.auth(user))
    assert r.status_code == 200
    page = r.json()
    assert [i["name"] for i in page["items"]] == [images[1]["name"]]
    rest = await kit.client.get(f"/v1/images?cursor={page['next_cursor']}", headers=kit.auth(user))
    assert [i["name"] for i in rest.json()["items"]] == [images[0]["name"]]
    r = await kit.client.get(f"/v1/images/{images[0]['name']}", headers=kit.auth(user))
    assert r.status_code == 200
    image = r.json()
    assert image["job_id"] == job_id and image["size_bytes"] == images[0]["size_bytes"]
    # No CDN configured: S3 presigned URLs, on the S3 endpoint.
    assert image["url"].startswith(f"{kit.settings.s3_endpoint_url}/")
    assert "X-Amz-Signature=" in image["url"]
    png = httpx.get(image["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert httpx.get(image["thumbnail_url"]).content == b"RIFF webp"
    job = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert [i["href"] for i in job["images"]] == [f"/v1/images/{i['name']}" for i in images]


async def test_delete_frees_quota_and_removes_objects(kit: Kit, user: str) -> None:
    job_id, images = await _job_with_images(kit, user)
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == sum(i["size_bytes"] for i in images)
    await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))  # cached now
    name = images[0]["name"]
    r = await kit.client.delete(f"/v1/images/{name}", headers=kit.auth(user))
    assert r.status_code == 204 and r.content == b""
    for key in (images[0]["key"], images[0]["thumbnail_key"]):
        with pytest.raises(ClientError):
            kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    # The deletion is an event: the read models show it once the jobs projection applied it.
    position = int(r.headers["X-Position"])
    stored = kit.app.job(UUID(job_id))
    assert stored.deleted_images.keys() == {name}
    assert await kit.project() >= position
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["storage_used_bytes"] == images[1]["size_bytes"]
    r = await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))
    assert r.status_code == 404
    again = await kit.client.delete(f"/v1/images/{name}", headers=kit.auth(user))
    assert again.status_code == 404
    read_back = {**kit.auth(user), "X-Min-Position": str(position)}
    listed = (await kit.client.get("/v1/images", headers=read_back)).json()["items"]
    assert [i["name"] for i in listed] == [images[1]["name"]]
    job = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert [i["name"] for i in job["images"]] == [images[1]["name"]]  # the cache was dropped


async def test_other_users_images_are_404(kit: Kit, user: str, other: str) -> None:
    _, images = await _job_with_images(kit, user, count=1)
    name = images[0]["name"]
    for method in ("GET", "DELETE"):
        r = await kit.client.request(method, f"/v1/images/{name}", headers=kit.auth(other))
        assert r.status_code == 404
        assert problem_type(r) == "not-found"
    assert (await kit.client.get("/v1/images", headers=kit.auth(other))).json()["items"] == []
    # Still there for its owner.
    assert (await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))).status_code == 200


@pytest.mark.parametrize("name", ["bad name", "x" * 201, "a%2Fb"])
async def test_bad_image_names_are_422_or_404(kit: Kit, user: str, name: str) -> None:
    r = await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))
    assert r.status_code in (404, 422)
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_deleted_once_recorded_even_when_s3_fails(
    kit: Kit, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event is the truth: an S3 failure after it is logged, not undone, and a repeated
    DELETE (a 404, the image is gone) removes the objects then."""
    job_id, images = await _job_with_images(kit, user, count=1)
    name, s3 = images[0]["name"], kit.services.s3

    def unavailable(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "DeleteObjects")

    with monkeypatch.context() as m:
        m.setattr(s3, "delete_objects", unavailable)
        r = await kit.client.delete(f"/v1/images/{name}", headers=kit.auth(user))
    assert r.status_code == 204
    assert name in kit.app.job(UUID(job_id)).deleted_images
    s3.head_object(Bucket=kit.settings.s3_bucket, Key=images[0]["key"])  # still there
    await kit.project()
    assert (await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))).status_code == 404
    again = await kit.client.delete(f"/v1/images/{name}", headers=kit.auth(user))
    assert again.status_code == 404 and problem_type(again) == "not-found"
    for key in (images[0]["key"], images[0]["thumbnail_key"]):
        with pytest.raises(ClientError):
            s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)


# --------------------------------------------------------------------- CloudFront signed URLs

CDN_DOMAIN = "cdn.pinksea.test"
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
IMAGES_BEHAVIOUR = "/users/*"  # the CloudFront behaviour of the images (modules/storage)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
async def cdn_kit(api_settings: Settings, signing_key: rsa.RSAPrivateKey) -> AsyncIterator[Kit]:
    """A second API app on the same stack, configured with a CDN as in production."""
    pem = signing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = Settings(
        _env_file=None,
        **{
            **api_settings.model_dump(),
            "cdn_domain": CDN_DOMAIN,
            "cloudfront_key_pair_id": KEY_PAIR_ID,
            "cloudfront_private_key": SecretStr(pem),
        },
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield Kit(settings, app.state.services, client)


def _cloudfront_accepts(public_key: rsa.RSAPublicKey, url: str) -> bool:
    """CloudFront's check of a canned-policy URL: the policy it rebuilds from the URL and its
    ``Expires``, verified against ``Signature`` with the key group's public key."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    policy = {
        "Statement": [
            {
                "Resource": urlunsplit(parts._replace(query="")),
                "Condition": {"DateLessThan": {"AWS:EpochTime": int(query["Expires"])}},
            }
        ]
    }
    # CloudFront's URL-safe base64: '+' '=' '/' travel as '-' '_' '~'.
    signature = base64.b64decode(
        query["Signature"].replace("-", "+").replace("_", "=").replace("~", "/")
    )
    try:
        public_key.verify(
            signature,
            json.dumps(policy, separators=(",", ":")).encode(),
            padding.PKCS1v15(),
            hashes.SHA1(),
        )
    except InvalidSignature:
        return False
    return True


async def test_cdn_urls_are_signed_for_cloudfront(
    cdn_kit: Kit, signing_key: rsa.RSAPrivateKey, user: str, other: str
) -> None:
    _, images = await _job_with_images(cdn_kit, user, count=1)
    r = await cdn_kit.client.get(f"/v1/images/{images[0]['name']}", headers=cdn_kit.auth(user))
    assert r.status_code == 200
    image = r.json()
    expires_at = int(datetime.fromisoformat(image["urls_expire_at"]).timestamp())
    public_key = signing_key.public_key()
    for url, key in (
        (image["url"], images[0]["key"]),
        (image["thumbnail_url"], images[0]["thumbnail_key"]),
    ):
        parts = urlsplit(url)
        # The S3 key is the path: the images behaviour serves it from the bucket as it is.
        assert (parts.scheme, parts.netloc, parts.path) == ("https", CDN_DOMAIN, f"/{key}")
        assert fnmatch(parts.path, IMAGES_BEHAVIOUR)
        query = dict(parse_qsl(parts.query))
        assert query.keys() == {"Expires", "Signature", "Key-Pair-Id"}
        assert query["Key-Pair-Id"] == KEY_PAIR_ID
        assert int(query["Expires"]) == expires_at
        assert _cloudfront_accepts(public_key, url)

    # The signature covers the path and the expiry: it opens nothing else.
    url = image["url"]
    assert not _cloudfront_accepts(public_key, url.replace(f"/users/{user}/", f"/users/{other}/"))
    later = url.replace(f"Expires={expires_at}", f"Expires={expires_at + 3600}")
    assert later != url and not _cloudfront_accepts(public_key, later)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert not _cloudfront_accepts(stranger, url)


async def test_listed_images_are_signed_for_cloudfront_too(
    cdn_kit: Kit, signing_key: rsa.RSAPrivateKey, user: str
) -> None:
    _, images = await _job_with_images(cdn_kit, user, count=2)
    items = (await cdn_kit.client.get("/v1/images", headers=cdn_kit.auth(user))).json()["items"]
    assert {i["name"] for i in items} == {i["name"] for i in images}
    for item in items:
        for url in (item["url"], item["thumbnail_url"]):
            assert urlsplit(url).netloc == CDN_DOMAIN
            assert _cloudfront_accepts(signing_key.public_key(), url)

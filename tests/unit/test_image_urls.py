"""Which image URLs the API hands out, and the signing key's loading. No network."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from api.image_urls import (
    URL_TTL,
    CloudFrontSignedUrls,
    S3PresignedUrls,
    expiry,
    image_urls,
    load_rsa_private_key,
)
from api.services import s3_client
from infra.settings import Settings

LOCAL = Settings(_env_file=None)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat
) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def _cdn_settings(pem: str) -> Settings:
    return Settings(
        _env_file=None,
        cdn_domain="cdn.pinksea.test",
        cloudfront_key_pair_id="K2JCJMDEHXQW5F",
        cloudfront_private_key=SecretStr(pem),
    )


def test_without_a_cdn_urls_are_s3_presigned() -> None:
    urls = image_urls(LOCAL, s3_client(LOCAL))
    assert isinstance(urls, S3PresignedUrls)
    url = urls.sign("users/u-1/images/j-0.png", expiry(datetime.now(UTC)))
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == LOCAL.s3_endpoint_url
    assert parts.path == f"/{LOCAL.s3_bucket}/users/u-1/images/j-0.png"
    query = dict(parse_qsl(parts.query))
    assert query["X-Amz-Expires"] == str(int(URL_TTL.total_seconds()))


def test_with_a_cdn_urls_are_signed_for_cloudfront(rsa_key: rsa.RSAPrivateKey) -> None:
    urls = image_urls(_cdn_settings(_pem(rsa_key, serialization.PrivateFormat.PKCS8)), None)
    assert isinstance(urls, CloudFrontSignedUrls)
    expires_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    parts = urlsplit(urls.sign("users/u-1/images/j-0.png", expires_at))
    assert (parts.netloc, parts.path) == ("cdn.pinksea.test", "/users/u-1/images/j-0.png")
    query = dict(parse_qsl(parts.query))
    assert query["Expires"] == str(int(expires_at.timestamp()))
    assert query["Key-Pair-Id"] == "K2JCJMDEHXQW5F"


def test_keys_are_quoted_in_the_signed_url(rsa_key: rsa.RSAPrivateKey) -> None:
    """A user id from an identity provider may hold characters a URL path cannot."""
    urls = image_urls(_cdn_settings(_pem(rsa_key, serialization.PrivateFormat.PKCS8)), None)
    url = urls.sign("users/google|123 4/images/j-0.png", datetime(2030, 1, 1, tzinfo=UTC))
    assert urlsplit(url).path == "/users/google%7C123%204/images/j-0.png"


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_pkcs8_and_pkcs1_keys_load(
    rsa_key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat
) -> None:
    loaded = load_rsa_private_key(_pem(rsa_key, fmt))
    assert loaded.private_numbers() == rsa_key.private_numbers()


def test_a_key_with_escaped_newlines_loads(rsa_key: rsa.RSAPrivateKey) -> None:
    one_line = _pem(rsa_key, serialization.PrivateFormat.PKCS8).replace("\n", "\\n")
    assert load_rsa_private_key(one_line).private_numbers() == rsa_key.private_numbers()


def test_a_key_cloudfront_cannot_verify_is_refused_at_start() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="must be an RSA key"):
        image_urls(_cdn_settings(_pem(ec_key, serialization.PrivateFormat.PKCS8)), None)
    with pytest.raises(ValueError):
        image_urls(_cdn_settings("-----BEGIN PRIVATE KEY-----\nnot a key\n"), None)


def test_urls_expire_on_a_whole_second() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    assert expiry(now) == datetime(2030, 1, 1, 13, 0, 0, tzinfo=UTC)

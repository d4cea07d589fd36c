"""The URLs of users' images: signed for CloudFront when a CDN is configured, S3 presigned
URLs otherwise (the local stack, where there is no CDN).

Both kinds are computed locally (no request to AWS) and expire together, one hour after they
were handed out. Every image URL the API returns comes from :meth:`ImageUrls.sign`.

CloudFront serves ``https://<cdn_domain>/<S3 key>`` from the images bucket: the behaviour
``/users/*`` (infra/terraform/modules/storage) matches the keys the GPU workers write,
``users/{user_id}/images/...`` and ``users/{user_id}/thumbnails/...``, and accepts only URLs
signed by a key of its trusted key group. A canned policy names the one URL and its expiry, so
a signed URL cannot be bent to another user's image.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from infra.settings import Settings

URL_TTL = timedelta(hours=1)


class ImageUrls(Protocol):
    def sign(self, key: str, expires_at: datetime) -> str:
        """A URL that fetches the object ``key`` of the images bucket until ``expires_at``."""
        ...


@dataclass(frozen=True)
class S3PresignedUrls:
    s3: Any  # a botocore S3 client
    bucket: str

    def sign(self, key: str, expires_at: datetime) -> str:
        # A local HMAC with the client's credentials; S3 counts the lifetime from its own
        # signing time, a moment after ``expires_at`` was set, so the URL never dies early.
        return str(
            self.s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=int(URL_TTL.total_seconds()),
            )
        )


@dataclass(frozen=True)
class CloudFrontSignedUrls:
    domain: str
    signer: CloudFrontSigner

    def sign(self, key: str, expires_at: datetime) -> str:
        # Quoted as S3 presigning quotes keys; CloudFront matches the policy's Resource against
        # the URL as requested, so the URL handed out is exactly the one signed.
        url = f"https://{self.domain}/{quote(key, safe='/~')}"
        return str(self.signer.generate_presigned_url(url, date_less_than=expires_at))


def load_rsa_private_key(pem: str) -> rsa.RSAPrivateKey:
    """The signing key, from PEM (PKCS#1 or PKCS#8, unencrypted)."""
    if "\\n" in pem and "\n" not in pem:
        # A PEM pasted into a one-line secret or .env value, newlines escaped.
        pem = pem.replace("\\n", "\n")
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("PINKSEA_CLOUDFRONT_PRIVATE_KEY must be an RSA key (CloudFront's)")
    return key


def cloudfront_signer(key_pair_id: str, private_key: rsa.RSAPrivateKey) -> CloudFrontSigner:
    def rsa_sha1(message: bytes) -> bytes:
        # SHA-1 with PKCS#1 v1.5: the one signature CloudFront verifies on signed URLs.
        return private_key.sign(message, padding.PKCS1v15(), hashes.SHA1())

    return CloudFrontSigner(key_pair_id, rsa_sha1)


def image_urls(settings: Settings, s3: Any) -> ImageUrls:
    """What signs this process's image URLs. Parses the private key, so call it once per
    process (at start: a bad key stops the API there, not at a user's request)."""
    if settings.cdn_domain and settings.cloudfront_key_pair_id and settings.cloudfront_private_key:
        key = load_rsa_private_key(settings.cloudfront_private_key.get_secret_value())
        return CloudFrontSignedUrls(
            settings.cdn_domain, cloudfront_signer(settings.cloudfront_key_pair_id, key)
        )
    return S3PresignedUrls(s3, settings.s3_bucket)


def expiry(now: datetime) -> datetime:
    """When URLs handed out at ``now`` expire: whole seconds, as CloudFront's ``Expires``."""
    return now.replace(microsecond=0) + URL_TTL


def signed_urls(urls: ImageUrls, key: str, thumbnail_key: str, now: datetime) -> dict[str, Any]:
    """An image's fields that carry its URLs: the PNG's, the thumbnail's, and their expiry."""
    expires_at = expiry(now)
    return {
        "url": urls.sign(key, expires_at),
        "thumbnail_url": urls.sign(thumbnail_key, expires_at),
        "urls_expire_at": expires_at,
    }

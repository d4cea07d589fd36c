"""The rehearsal's CloudFront URL verifier (rehearsal/checks.py) against botocore's signer: what
it accepts is what CloudFront's edge would, and a tampered URL, another key or another key pair
id is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from rehearsal.checks import CheckFailed, verify_cloudfront_url

DOMAIN = "cdn.pinksea.test"
KEY_ID = "K2TESTKEY"
URL = f"https://{DOMAIN}/users/u-1/images/job-0.png"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _signer(key: rsa.RSAPrivateKey, key_id: str = KEY_ID) -> CloudFrontSigner:
    return CloudFrontSigner(key_id, lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA1()))


def test_canned_and_custom_policies_verify(key: rsa.RSAPrivateKey) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    signer = _signer(key)
    canned = signer.generate_presigned_url(URL, date_less_than=expires)
    custom = signer.generate_presigned_url(URL, policy=signer.build_policy(URL, expires))
    for url in (canned, custom):
        got = verify_cloudfront_url(url, key.public_key(), key_pair_id=KEY_ID, domain=DOMAIN)
        assert got == "users/u-1/images/job-0.png"


def test_tampering_another_key_or_key_pair_is_refused(key: rsa.RSAPrivateKey) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    url = _signer(key).generate_presigned_url(URL, date_less_than=expires)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "other object": url.replace("job-0.png", "job-1.png"),
        "later expiry": url.replace("Expires=", "Expires=9"),
        "other key": _signer(stranger).generate_presigned_url(URL, date_less_than=expires),
        "other key pair id": _signer(key, "K2OTHER").generate_presigned_url(
            URL, date_less_than=expires
        ),
        "other domain": _signer(key).generate_presigned_url(
            URL.replace(DOMAIN, "evil.test"), date_less_than=expires
        ),
    }
    for case, bad in cases.items():
        with pytest.raises(CheckFailed):
            verify_cloudfront_url(bad, key.public_key(), key_pair_id=KEY_ID, domain=DOMAIN)
        assert case

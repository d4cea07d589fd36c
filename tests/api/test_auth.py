"""Authentication: JWTs (dev issuer and a JWKS over HTTP), refusals, sign-up, admin."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import (
    DEV_ISSUER,
    AuthError,
    JwtVerifier,
    dev_key_path,
    load_or_create_dev_key,
    public_jwk,
)
from domain import ids
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


def _claims(kit: Kit, user: str, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims = {
        "iss": DEV_ISSUER,
        "aud": kit.settings.jwt_audience,
        "sub": user,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _dev_key(kit: Kit) -> tuple[rsa.RSAPrivateKey, str]:
    key = load_or_create_dev_key(dev_key_path(kit.settings))
    return key, public_jwk(key.public_key())["kid"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _me(kit: Kit, token: str) -> Any:
    return await kit.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})


async def test_missing_credentials_is_401_with_challenge(kit: Kit) -> None:
    r = await kit.client.get("/v1/me")
    assert r.status_code == 401
    assert problem_type(r) == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_first_request_signs_the_user_up_once(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user
    assert body["plan"]["slug"] == "trial"
    assert body["auth"] == "jwt"
    position = kit.app.current_position()
    # Another process (no registration cache) registers again: nothing new is recorded.
    kit.services.registered.drop(user)
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    assert kit.app.subscription(user).plan_slug == "trial"
    events = list(kit.app.recorder.select_events(ids.subscription_id(user)))
    assert len(events) == 1  # one TrialStarted, however many first requests
    assert kit.app.current_position() >= position


@pytest.mark.parametrize(
    "case",
    ["expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "no_exp", "bad_subject"],
)
async def test_bad_claims_are_401(kit: Kit, user: str, case: str) -> None:
    key, kid = _dev_key(kit)
    now = datetime.now(UTC)
    by_case: dict[str, dict[str, Any]] = {
        "expired": {"exp": int((now - timedelta(minutes=5)).timestamp())},
        "not_yet_valid": {"nbf": int((now + timedelta(minutes=5)).timestamp())},
        "wrong_issuer": {"iss": "https://evil.example.com"},
        "wrong_audience": {"aud": "someone-else"},
        "no_exp": {"exp": None},
        "bad_subject": {"sub": "../../etc"},
    }
    overrides = by_case[case]
    token = jwt.encode(
        _claims(kit, user, **overrides), key, algorithm="RS256", headers={"kid": kid}
    )
    r = await _me(kit, token)
    assert r.status_code == 401, r.text
    assert problem_type(r) == "unauthorized"


async def test_forged_signature_is_401(kit: Kit, user: str) -> None:
    _, kid = _dev_key(kit)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(kit, user), other, algorithm="RS256", headers={"kid": kid})
    assert (await _me(kit, token)).status_code == 401
    # A valid token with one flipped payload character fails too.
    good = kit.token(user)
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["cognito:groups"] = ["admin"]
    tampered = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    assert (await _me(kit, tampered)).status_code == 401


async def test_unknown_kid_is_401(kit: Kit, user: str) -> None:
    key, _ = _dev_key(kit)
    token = jwt.encode(_claims(kit, user), key, algorithm="RS256", headers={"kid": "nope"})
    assert (await _me(kit, token)).status_code == 401


async def test_alg_none_is_401(kit: Kit, user: str) -> None:
    _, kid = _dev_key(kit)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims(kit, user)).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        r = await _me(kit, token)
        assert r.status_code == 401, r.text


async def test_hs256_signed_with_the_public_key_is_401(kit: Kit, user: str) -> None:
    """The classic key-confusion attack: HMAC with the RSA public key as the secret."""
    key, kid = _dev_key(kit)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims(kit, user)).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{_b64(signature)}"
    r = await _me(kit, token)
    assert r.status_code == 401
    assert "RS256" in r.json()["detail"]


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer", "psk_short"])
async def test_malformed_credentials_are_401(kit: Kit, token: str) -> None:
    r = await kit.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert problem_type(r) == "unauthorized"


async def test_admin_routes_need_the_admin_group(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/admin/users", headers=kit.auth(user))
    assert r.status_code == 403
    assert problem_type(r) == "admin-required"
    r = await kit.client.get("/v1/admin/users", headers=kit.auth(f"{user}-adm", admin=True))
    assert r.status_code == 200


async def test_dev_tokens_are_refused_unless_enabled(kit: Kit, user: str) -> None:
    verifier = JwtVerifier(kit.settings.model_copy(update={"dev_jwt_enabled": False}))
    with pytest.raises(AuthError, match="issuer"):
        await verifier.verify(kit.token(user))


# --------------------------------------------------------------- a JWKS served over HTTP


class _Issuer:
    """A Cognito-like issuer: a real HTTP server publishing a JWKS that can rotate."""

    def __init__(self) -> None:
        self.keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048)]
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = json.dumps(
                    {"keys": [public_jwk(k.public_key()) for k in issuer.keys]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pool"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: rsa.RSAPrivateKey, **claims: Any) -> str:
        now = datetime.now(UTC)
        body = {
            "iss": self.url,
            "sub": "0b4c5d6e-cognito-user",
            "exp": int((now + timedelta(minutes=5)).timestamp()),
            "iat": int(now.timestamp()),
            **claims,
        }
        kid = public_jwk(key.public_key())["kid"]
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    i = _Issuer()
    yield i
    i.server.shutdown()


async def test_cognito_style_tokens_via_jwks(issuer: _Issuer) -> None:
    settings = Settings(
        jwt_issuer=issuer.url,
        jwt_audience="client-123",
        jwks_refresh_min_interval_s=0.0,
    )
    verifier = JwtVerifier(settings)
    # An ID token (aud) and an access token (client_id, no aud), both with groups.
    principal = await verifier.verify(
        issuer.token(issuer.keys[0], aud="client-123", token_use="id", email="a@b.c")
    )
    assert principal.user_id == "0b4c5d6e-cognito-user" and principal.email == "a@b.c"
    assert not principal.is_admin
    principal = await verifier.verify(
        issuer.token(
            issuer.keys[0],
            token_use="access",
            client_id="client-123",
            **{"cognito:groups": ["admin"]},
        )
    )
    assert principal.is_admin
    assert issuer.fetches == 1  # cached
    with pytest.raises(AuthError, match="audience"):
        await verifier.verify(issuer.token(issuer.keys[0], token_use="access", client_id="x"))
    # Rotation: a token from a new key makes the verifier fetch the JWKS again.
    issuer.keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    await verifier.verify(issuer.token(issuer.keys[1], aud="client-123"))
    assert issuer.fetches == 2


async def test_unknown_kids_do_not_hammer_the_jwks(issuer: _Issuer) -> None:
    settings = Settings(jwt_issuer=issuer.url, jwt_audience="c", jwks_refresh_min_interval_s=60)
    verifier = JwtVerifier(settings)
    await verifier.verify(issuer.token(issuer.keys[0], aud="c"))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(5):
        with pytest.raises(AuthError, match="unknown key"):
            await verifier.verify(issuer.token(stranger, aud="c"))
    assert issuer.fetches == 1
